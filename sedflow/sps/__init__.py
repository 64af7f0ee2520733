"""Pure, batched stellar-population physics: SSP grids, star-formation and metallicity
histories, dust, photometry, and the SED model that combines them."""

from sedflow.sps.history import NMFBases
from sedflow.sps.model import PROPERTY_NAMES, SEDModel
from sedflow.sps.photometry import BANDS, mag_to_nanomaggies, nanomaggies_to_mag
from sedflow.sps.ssp import SSPGrid, bc03_miles, fsps_grid

__all__ = ["NMFBases", "SEDModel", "PROPERTY_NAMES", "SSPGrid", "bc03_miles", "fsps_grid", "BANDS",
           "nanomaggies_to_mag", "mag_to_nanomaggies"]
