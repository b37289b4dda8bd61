from setuptools import setup

setup(cffi_modules=["csrc/native_build.py:ffibuilder"])
