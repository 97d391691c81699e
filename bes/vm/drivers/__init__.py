"""Hypervisor drivers: one interface (base.py), one module per hypervisor."""
