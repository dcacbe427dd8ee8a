"""Helpers shared by the Python tests: writing safetensors files without the
safetensors package (CI has only Debian's packages)."""
import json
import struct

import pytest

# safetensors name, numpy dtype (None: written as raw bits), bytes per element
DTYPES = {
    "BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1), "I16": ("int16", 2), "U16": ("uint16", 2),
    "F16": ("float16", 2), "BF16": (None, 2), "I32": ("int32", 4), "U32": ("uint32", 4), "F32": ("float32", 4),
    "I64": ("int64", 8), "U64": ("uint64", 8), "F64": ("float64", 8), "F8_E4M3": (None, 1), "F8_E5M2": (None, 1),
}


def write_safetensors(path, tensors):
    """tensors: name -> (safetensors dtype, shape, raw bytes). Returns path."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    return str(path)


@pytest.fixture
def write_st(tmp_path):
    def make(name, tensors):
        return write_safetensors(tmp_path / name, tensors)
    return make
