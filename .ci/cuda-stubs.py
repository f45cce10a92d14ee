"""Stub CUDA libraries to link against on a machine without them, as NVIDIA's own
lib/stubs: every function cudarc binds (read from its generated bindings) as an empty
symbol, in a shared library with the real one's SONAME. At run time the real libraries
(driver, cuBLAS, cuRAND, NVRTC, NCCL of CUDA 13) are found by that name instead.

usage: python3 cuda-stubs.py CUDARC_SRC_DIR OUT_DIR
"""
import pathlib
import re
import subprocess
import sys

# cudarc module -> (library file the linker asks for, SONAME of the CUDA 13 library)
LIBRARIES = {
    "driver": ("libcuda.so", "libcuda.so.1"),
    "cublas": ("libcublas.so", "libcublas.so.13"),
    "cublaslt": ("libcublasLt.so", "libcublasLt.so.13"),
    "curand": ("libcurand.so", "libcurand.so.10"),
    "nvrtc": ("libnvrtc.so", "libnvrtc.so.13"),
    "nccl": ("libnccl.so", "libnccl.so.2"),
}


def main() -> None:
    src, out = pathlib.Path(sys.argv[1]) / "src", pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for module, (file, soname) in LIBRARIES.items():
        text = (src / module / "sys" / "mod.rs").read_text()
        names = sorted(set(re.findall(r"^pub unsafe fn (\w+)\(", text, re.M)))
        if not names:
            sys.exit(f"{module}: no functions found in cudarc's bindings")
        c = out / f"{module}.c"
        c.write_text("".join(f"void {n}(void) {{}}\n" for n in names))
        subprocess.run(
            ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", out / file, c],
            check=True,
        )
        print(f"{out / file}: {len(names)} functions, SONAME {soname}")


if __name__ == "__main__":
    main()
