"""Does /dev/kvm really run guest code? Ask it to, rather than trusting that it exists.

Some hosts expose a /dev/kvm that creates VMs but cannot run an ordinary guest (nested
paravirtual KVM such as PVM emulates what a stock kernel executes, a thousand times slower,
and fails on instructions it lacks). Such a host still runs a few real-mode instructions, so
the probe asks for what only a real hardware-assisted vCPU does quickly: it creates a VM with
one vCPU whose code writes 0x42 to a port, counts a register down from two million (a
millisecond natively, about a second when emulated), raises a breakpoint interrupt through the
real-mode vector table and halts. KVM_RUN must report the port write, then the halt, within
the time limit. The probe runs in a child process with a timeout, so a hanging ioctl cannot
hang the caller. ``python -m bes.vm.kvm`` prints the verdict.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bes.vm.runner import CommandRunner

KVM_DEVICE = Path("/dev/kvm")

_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_GET_VCPU_MMAP_SIZE = 0xAE04
_KVM_CREATE_VCPU = 0xAE41
_KVM_SET_USER_MEMORY_REGION = 0x4020AE46
_KVM_RUN = 0xAE80
_KVM_GET_REGS = 0x8090AE81
_KVM_SET_REGS = 0x4090AE82
_KVM_GET_SREGS = 0x8138AE83
_KVM_SET_SREGS = 0x4138AE84
_EXIT_IO = 2
_EXIT_HLT = 5
_CODE_ADDRESS = 0x1000
_HANDLER_ADDRESS = 0x2000
_STACK_TOP = 0x8000
_LOOPS = 2_000_000
_CODE = (
    bytes([0xB0, 0x42, 0xE6, 0x10])  # mov al, 0x42; out 0x10, al
    + bytes([0x66, 0xB9])
    + _LOOPS.to_bytes(4, "little")  # mov ecx, _LOOPS
    + bytes([0x66, 0x49, 0x75, 0xFC])  # loop: dec ecx; jnz loop
    + bytes([0xCC, 0xF4])  # int3; hlt
)
_IRET = bytes([0xCF])
# A native vCPU needs milliseconds; the child's start-up dominates.
_NATIVE_LIMIT_S = 0.1
_PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class KvmProbe:
    usable: bool
    reason: str


def probe(runner: CommandRunner) -> KvmProbe:
    """Run the guest-code check in a child process."""
    if not KVM_DEVICE.exists():
        return KvmProbe(False, f"{KVM_DEVICE} does not exist")
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return KvmProbe(False, f"{KVM_DEVICE} is not readable and writable by this user")
    result = runner.run(
        [sys.executable, "-m", "bes.vm.kvm"], timeout_s=_PROBE_TIMEOUT_S, check=False
    )
    verdict = result.stdout.strip().splitlines()
    if result.exit_code == 0 and verdict == ["usable"]:
        return KvmProbe(True, "KVM ran a test guest")
    detail = (verdict[-1] if verdict else result.stderr.strip()[-200:]) or "no output"
    return KvmProbe(False, f"KVM did not run a test guest: {detail}")


def run_test_guest() -> str:
    """In this process: the verdict, "usable" or what went wrong."""
    try:
        with KVM_DEVICE.open("r+b", buffering=0) as kvm:
            return _run(kvm.fileno())
    except OSError as exc:
        return f"{exc.strerror or exc}"


def _run(kvm: int) -> str:
    if fcntl.ioctl(kvm, _KVM_GET_API_VERSION) != 12:
        return "unexpected KVM API version"
    vm = fcntl.ioctl(kvm, _KVM_CREATE_VM, 0)
    memory = mmap.mmap(-1, 0x10000)
    memory[_CODE_ADDRESS : _CODE_ADDRESS + len(_CODE)] = _CODE
    memory[_HANDLER_ADDRESS : _HANDLER_ADDRESS + 1] = _IRET
    memory[3 * 4 : 4 * 4] = struct.pack("<HH", _HANDLER_ADDRESS, 0)  # vector 3: int3
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    region = struct.pack("=IIQQQ", 0, 0, 0, len(memory), address)
    fcntl.ioctl(vm, _KVM_SET_USER_MEMORY_REGION, region)
    vcpu = fcntl.ioctl(vm, _KVM_CREATE_VCPU, 0)
    run_size = fcntl.ioctl(kvm, _KVM_GET_VCPU_MMAP_SIZE)
    run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    sregs = bytearray(312)
    fcntl.ioctl(vcpu, _KVM_GET_SREGS, sregs)
    struct.pack_into("=Q", sregs, 0, 0)  # cs.base
    struct.pack_into("=H", sregs, 12, 0)  # cs.selector
    fcntl.ioctl(vcpu, _KVM_SET_SREGS, bytes(sregs))
    regs = bytearray(144)
    fcntl.ioctl(vcpu, _KVM_GET_REGS, regs)
    regs[:] = bytes(144)
    struct.pack_into("=Q", regs, 6 * 8, _STACK_TOP)  # rsp
    struct.pack_into("=QQ", regs, 128, _CODE_ADDRESS, 0x2)  # rip, rflags
    fcntl.ioctl(vcpu, _KVM_SET_REGS, bytes(regs))

    fcntl.ioctl(vcpu, _KVM_RUN, 0)
    reason = struct.unpack_from("=I", run, 8)[0]
    if reason != _EXIT_IO:
        return f"first exit was {reason}, not the port write"
    _direction, size, port, _count, offset = struct.unpack_from("=BBHIQ", run, 32)
    if (port, size, run[offset]) != (0x10, 1, 0x42):
        return "the port write carried the wrong value"
    started = time.monotonic()
    fcntl.ioctl(vcpu, _KVM_RUN, 0)
    elapsed = time.monotonic() - started
    reason = struct.unpack_from("=I", run, 8)[0]
    if reason != _EXIT_HLT:
        return f"second exit was {reason}, not the halt"
    if elapsed > _NATIVE_LIMIT_S:
        return f"guest code is emulated ({elapsed:.1f} s for a loop a CPU runs in milliseconds)"
    return "usable"


if __name__ == "__main__":
    sys.stdout.write(run_test_guest() + "\n")
