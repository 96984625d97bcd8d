"""CPU facts read from /proc/cpuinfo text (x86 and ARM layouts)."""

from bertship.profiles import cpu_info

X86 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 fma avx512f avx512_vnni amx_int8 amx_tile sse4_2
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes crc32 atomics asimddp i8mm bf16
CPU part\t: 0xd0c
"""


def test_x86_flags():
    info = cpu_info(X86)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["flags"] == ["amx_int8", "amx_tile", "avx2", "avx512_vnni", "avx512f", "fma"]


def test_arm_features():
    assert cpu_info(ARM)["flags"] == ["asimd", "asimddp", "bf16", "i8mm"]


def test_this_machine():
    info = cpu_info()
    assert info["cores"] >= 1 and info["arch"]
