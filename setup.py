"""Builds flowsift's compiled parts. Metadata lives in pyproject.toml.

Before compiling anything we check for a C compiler and for libpcap's headers, so that a
missing one is reported in one line instead of a screen of compiler output.
"""
import glob
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PCAP_PROBE = "#include <pcap/pcap.h>\nint main(void){pcap_t*p=pcap_open_dead(1,65535);pcap_close(p);return 0;}\n"
# OpenSSL's libcrypto: `streams -o` hashes each direction in its writer thread, without the GIL
CRYPTO_PROBE = "#include <openssl/evp.h>\nint main(void){EVP_MD_CTX*c=EVP_MD_CTX_new();EVP_MD_CTX_free(c);return 0;}\n"


def _fail(msg):
    sys.stderr.write(f"flowsift build: {msg}\n")
    sys.exit(1)


def _preflight():
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not shutil.which(cc[0]):
        _fail(f"no C compiler ({cc[0]!r} not found); install one, e.g. `apt-get install build-essential`")
    with tempfile.TemporaryDirectory() as tmp:
        for probe, lib, what, package in ((PCAP_PROBE, "-lpcap", "libpcap", "libpcap-dev"),
                                          (CRYPTO_PROBE, "-lcrypto", "OpenSSL (libcrypto)", "libssl-dev")):
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(probe)
            res = subprocess.run(cc + [src, "-o", os.path.join(tmp, "probe"), lib], capture_output=True, text=True)
            if res.returncode != 0:
                first = next((l for l in res.stderr.splitlines() if "error" in l), res.stderr.strip()[:200])
                _fail(f"{what} development files not usable ({first.strip()}); install them, "
                      f"e.g. `apt-get install {package}`")


class BuildExt(build_ext):
    def run(self):
        _preflight()
        super().run()


def ext(name, libraries=()):
    return Extension(
        name,
        [name.replace(".", "/") + ".pyx"],
        include_dirs=["flowsift/io", "flowsift/streams", "."],
        depends=sorted(glob.glob("flowsift/*/*.h")),   # an edited C header rebuilds what includes it
        libraries=list(libraries),
        extra_compile_args=["-O3", "-Wno-unused-function", "-Wno-unreachable-code"],
    )


EXTENSIONS = [
    ext("flowsift.io._batch"),
    ext("flowsift.io._reader"),
    ext("flowsift.io._decode"),
    ext("flowsift.io._bpf", libraries=["pcap"]),
    ext("flowsift.io._flowtable"),
    ext("flowsift.io._defrag"),
    ext("flowsift.io._afpacket"),
    ext("flowsift.io._connset"),
    ext("flowsift.reassembly._engine"),
    ext("flowsift.reassembly._filesink", libraries=["crypto"]),
    ext("flowsift.streams._store"),
    ext("flowsift.streams._pointer"),
]



def _dpdk():
    """The DPDK port, built only where pkg-config finds libdpdk (FLOWSIFT_NO_DPDK=1 skips it)."""
    if os.environ.get("FLOWSIFT_NO_DPDK") or not shutil.which("pkg-config"):
        return []
    if subprocess.run(["pkg-config", "--exists", "libdpdk"]).returncode != 0:
        return []
    cflags = shlex.split(subprocess.run(["pkg-config", "--cflags", "libdpdk"], capture_output=True, text=True).stdout)
    libs = shlex.split(subprocess.run(["pkg-config", "--libs", "libdpdk"], capture_output=True, text=True).stdout)
    e = ext("flowsift.io._dpdk")
    # DPDK's own flags (-march, its config header) apply to this extension only
    e.extra_compile_args = cflags + ["-O3", "-Wno-unused-function", "-Wno-deprecated-declarations"]
    e.extra_link_args = libs
    return [e]


EXTENSIONS += _dpdk()

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True, "initializedcheck": False},
        quiet=True,
    ),
    cmdclass={"build_ext": BuildExt},
)
