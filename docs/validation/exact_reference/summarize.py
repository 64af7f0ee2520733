import json, sys, numpy as np
d = json.load(open(sys.argv[1])); names = ["logmstar","beta1","beta2","beta3","beta4","fburst","tburst","gamma1","gamma2","tau_bc","tau_ism","n_dust"]
g = list(d.values()); n = len(g)
A = np.array([x["anpe"] for x in g]); N = np.array([x["nautilus"] for x in g]); AN = np.array([x["anpe_vs_nautilus"] for x in g])
S = np.array([x["signed_nautilus"] for x in g]); WA = np.array([x["width_anpe"] for x in g]); WN = np.array([x["width_nautilus"] for x in g])
ess = np.array([x["ess"] for x in g]); edge = np.array([x["edge_weight"] for x in g]); hard = np.array([x["hard"] for x in g])
rng = np.random.default_rng(0)
def bse(M):
    return np.std([np.median(M[rng.integers(0, n, n)], 0) for _ in range(1000)], 0)
bA = bse(A)
print(f"{n} galaxies ({hard.sum()} hard); exact-reference ESS min {ess.min():.0f} median {np.median(ess):.0f}; max edge weight {edge.max():.4f}")
print("| parameter | ANPE vs exact | (bootstrap SE) | ANPE vs exact, hard | nautilus vs exact | nautilus signed mean | ANPE vs nautilus | width ANPE/exact | width nautilus/exact |")
print("|---|---|---|---|---|---|---|---|---|")
for k, nm in enumerate(names):
    print(f"| {nm} | {np.median(A[:,k]):.3f} | {bA[k]:.3f} | {np.median(A[hard,k]):.3f} | {np.median(N[:,k]):.3f} | {np.mean(S[:,k]):+.3f} | {np.median(AN[:,k]):.3f} | {np.median(WA[:,k]):.2f} | {np.median(WN[:,k]):.2f} |")
print("mean over params/galaxies: ANPE vs exact", A.mean().round(3), "ANPE vs nautilus", AN.mean().round(3), "nautilus vs exact", N.mean().round(3))
