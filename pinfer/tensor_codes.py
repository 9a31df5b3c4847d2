"""Wire codes for tensor dtypes, shared by every format that carries raw tensors (envelopes, the TLS
data plane): one byte names the dtype, and the numpy dtype fixes the byte order, so no tensor is
ever pickled."""

from __future__ import annotations

import numpy as np
import torch

DTYPES: dict[int, tuple[torch.dtype, np.dtype]] = {
    1: (torch.int64, np.dtype("<i8")),
    2: (torch.int32, np.dtype("<i4")),
    3: (torch.int16, np.dtype("<i2")),
    4: (torch.int8, np.dtype("i1")),
    5: (torch.uint8, np.dtype("u1")),
    6: (torch.bool, np.dtype("?")),
    7: (torch.float64, np.dtype("<f8")),
    8: (torch.float32, np.dtype("<f4")),
    9: (torch.float16, np.dtype("<f2")),
}
DTYPE_CODES: dict[torch.dtype, int] = {torch_dtype: code for code, (torch_dtype, _) in DTYPES.items()}
