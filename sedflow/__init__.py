"""sedflow: amortized Bayesian SED modelling of galaxy photometry at survey scale.

Re-implements SEDflow (Hahn & Melchior 2022, arXiv:2203.07391) with the PROVABGS
"NMF + burst" SED model (Hahn et al. 2022, arXiv:2202.01809).
"""

from sedflow.prior import PARAM_NAMES, Prior
from sedflow.sps import BANDS, PROPERTY_NAMES, NMFBases, SEDModel, SSPGrid

__version__ = "0.1.0"
__all__ = ["PARAM_NAMES", "PROPERTY_NAMES", "BANDS", "Prior", "SEDModel", "NMFBases", "SSPGrid"]
