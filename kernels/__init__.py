"""Triton kernels, shipped inside the wheel as ``ecgkt.kernels``. triton is optional."""
