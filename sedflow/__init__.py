"""sedflow: amortized Bayesian SED modelling of galaxy photometry at survey scale.

Re-implements SEDflow (Hahn & Melchior 2022, arXiv:2203.07391) with the PROVABGS
"NMF + burst" SED model (Hahn et al. 2022, arXiv:2202.01809).

Example
-------
>>> import sedflow
>>> res = sedflow.fit([20.6, 60.2, 121.0, 170.3, 215.8], [2.1, 1.3, 2.2, 3.2, 6.2], 0.08,
...                   spec="nsa", n_samples=1000)
>>> list(res.summary["method"])
['anpe']
>>> pz = sedflow.fit([20.6, 60.2, 121.0, 170.3, 215.8], [2.1, 1.3, 2.2, 3.2, 6.2], None,   # no redshift
...                  spec="nsa", n_samples=1000, model="photoz")
>>> "z_p50" in pz.summary
True
"""

from sedflow.fitting import FitResult, fit
from sedflow.posterior import load_model
from sedflow.prior import PARAM_NAMES, Prior, PriorWithRedshift
from sedflow.sps import BANDS, PROPERTY_NAMES, NMFBases, SEDModel, SSPGrid

__version__ = "0.1.0"
__all__ = ["fit", "FitResult", "load_model", "PARAM_NAMES", "PROPERTY_NAMES", "BANDS", "Prior", "PriorWithRedshift",
           "SEDModel", "NMFBases", "SSPGrid"]
