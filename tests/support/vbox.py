"""Replays captured VBoxManage output through the VirtualBox driver's CommandRunner.

``VBoxManageReplay`` is a CommandRunner whose ``_execute`` answers each VBoxManage command
with the captured text for it (tests/fixtures/vm/vboxmanage), keeping just enough state
(registered VMs and their VMState) to pick the right capture. Everything above ``_execute``
(retries, trace and replay files, error codes) is the real runner. Failures can be queued per
subcommand, e.g. two session-lock errors before ``startvm`` succeeds.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from bes.vm.drivers.virtualbox import vbox_runner_settings
from bes.vm.runner import CommandResult, CommandRunner

CAPTURES = Path(__file__).parents[1] / "fixtures" / "vm" / "vboxmanage"


def capture(file_name: str, **fields: str) -> str:
    return (CAPTURES / file_name).read_text().format(**fields)


class VBoxManageReplay(CommandRunner):
    def __init__(self, root: Path, *, version: str = "7.0") -> None:
        self.sleeps: list[float] = []
        super().__init__(**vbox_runner_settings(root), sleep=self.sleeps.append)
        self.version = version
        self.hostinfo = "hostinfo.txt"
        self.vms: dict[str, str] = {}  # name -> VMState
        self.basefolders: dict[str, str] = {}
        self.failures: dict[str, list[str]] = defaultdict(list)
        self.calls: list[tuple[str, ...]] = []
        self.envs: list[str | None] = []

    def guest_powers_off(self, name: str) -> None:
        self.vms[name] = "poweroff"

    def _execute(
        self,
        argv: tuple[str, ...],
        timeout_s: float,
        cwd: Path | None,
        input_text: str | None,
    ) -> CommandResult:
        self.calls.append(argv)
        self.envs.append(self._env.get("VBOX_USER_HOME"))
        args = argv[2:] if argv[1:2] == ("-q",) else argv[1:]
        command = args[0]
        name = args[1] if len(args) > 1 else ""
        if self.failures[command]:
            text = capture(self.failures[command].pop(0), name=name)
            return CommandResult(argv, 1, "", text, 0.01)
        return self._answer(argv, command, args)

    def _answer(self, argv: tuple[str, ...], command: str, args: tuple[str, ...]) -> CommandResult:
        def ok(text: str = "") -> CommandResult:
            return CommandResult(argv, 0, text, "", 0.01)

        def not_found(name: str) -> CommandResult:
            return CommandResult(argv, 1, "", capture("not-found.txt", name=name), 0.01)

        if command == "--version":
            return ok(capture(f"version-{self.version}.txt"))
        if command == "list" and args[1] == "hostinfo":
            return ok(capture(self.hostinfo))
        if command == "list" and args[1] == "vms":
            return ok(
                "".join(f'"{vm}" {{6294f16b-4f05-4430-afb9-773bdb237aec}}\n' for vm in self.vms)
            )
        if command == "createvm":
            name = args[args.index("--name") + 1]
            basefolder = args[args.index("--basefolder") + 1]
            self.vms[name] = "poweroff"
            self.basefolders[name] = basefolder
            return ok(capture("createvm.txt", name=name, basefolder=basefolder))
        name = args[1] if len(args) > 1 else ""
        if command in ("modifyvm", "storagectl", "storageattach", "startvm", "controlvm"):
            if name not in self.vms:
                return not_found(name)
            if command == "startvm":
                self.vms[name] = "running"
                return ok(capture("startvm.txt", name=name))
            if command == "controlvm" and args[2] == "poweroff":
                self.vms[name] = "poweroff"
                return ok(capture("poweroff.txt"))
            if command == "controlvm" and args[2] == "acpipowerbutton":
                return ok()  # the simulated guest ignores ACPI, like the tiny guest
            if command == "controlvm" and args[2] in ("pause", "resume"):
                self.vms[name] = "paused" if args[2] == "pause" else "running"
                return ok()  # both print nothing when they work
            return ok()
        if command == "showvminfo":
            if name not in self.vms:
                return not_found(name)
            return ok(
                capture(
                    "showvminfo.txt",
                    name=name,
                    basefolder=self.basefolders[name],
                    state=self.vms[name],
                )
            )
        if command == "unregistervm":
            if self.vms.pop(name, None) is None:
                return not_found(name)
            return ok()
        if command == "closemedium":
            return ok()
        return CommandResult(argv, 1, "", f"VBoxManage: error: unknown command {command}", 0.01)

    def subcommands(self) -> list[str]:
        return [" ".join(call[2:4]) for call in self.calls]
