"""Data about real Dassl's config tree that both the built-in engine and the config hash need, in a leaf module
(no imports), so that neither imports the other."""
from __future__ import annotations

from typing import Any, Dict

#: Sub-nodes that Dassl's own ``get_cfg_default()`` declares under ``TRAINER`` for its built-in DA/DG/SSL trainers
#: (Dassl.pytorch c61a1b5, ``dassl/config/defaults.py``; 44 keys). The built-in engine declares them too, so a
#: yaml or ``KEY VALUE`` option written for Dassl merges under both engines; no promptot trainer reads them, and
#: :func:`config_hash` leaves them out.
DASSL_TRAINER_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "MCD": {"N_STEP_F": 4},
    "MME": {"LMDA": 0.1},
    "CDAC": {"CLASS_LR_MULTI": 10, "RAMPUP_COEF": 30, "RAMPUP_ITRS": 1000, "TOPK_MATCH": 5, "P_THRESH": 0.95,
             "STRONG_TRANSFORMS": ()},
    "SE": {"EMA_ALPHA": 0.999, "CONF_THRE": 0.95, "RAMPUP": 300},
    "M3SDA": {"LMDA": 0.5, "N_STEP_F": 4},
    "DAEL": {"WEIGHT_U": 0.5, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
    "CROSSGRAD": {"EPS_F": 1.0, "EPS_D": 1.0, "ALPHA_F": 0.5, "ALPHA_D": 0.5},
    "DDAIG": {"G_ARCH": "", "LMDA": 0.3, "CLAMP": False, "CLAMP_MIN": -1.0, "CLAMP_MAX": 1.0, "WARMUP": 0,
              "ALPHA": 0.5},
    "DAELDG": {"WEIGHT_U": 0.5, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
    "DOMAINMIX": {"TYPE": "crossdomain", "ALPHA": 1.0, "BETA": 1.0},
    "ENTMIN": {"LMDA": 1e-3},
    "MEANTEACHER": {"WEIGHT_U": 1.0, "EMA_ALPHA": 0.999, "RAMPUP": 5},
    "MIXMATCH": {"WEIGHT_U": 100.0, "TEMP": 2.0, "MIXUP_BETA": 0.75, "RAMPUP": 20000},
    "FIXMATCH": {"WEIGHT_U": 1.0, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
}
