"""Training methods: one small class per algorithm behind the one trainer loop."""
from __future__ import annotations

from torch import nn

from methods.base import Batch, Method, MethodOutput, StepContext
from methods.bcp import BCP
from methods.dtc import DTC
from methods.mc_net import MCNet
from methods.mean_teacher import MeanTeacher
from methods.sassnet import SASSNet
from methods.settings import MethodSettings
from methods.ss_net import SSNet
from methods.supervised import Supervised
from methods.ua_mt import UAMT
from methods.urpc import URPC
from utils.choices import unknown_choice

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (SSNet, Supervised, MeanTeacher, UAMT, SASSNet, DTC, URPC, MCNet, BCP)
}


def check_method_name(name: str) -> str:
    if name not in METHODS:
        raise unknown_choice("method", name, METHODS)
    return name


def build_method(name: str, network: nn.Module, settings: MethodSettings) -> Method:
    return METHODS[check_method_name(name)](network, settings)


__all__ = ["Batch", "METHODS", "Method", "MethodOutput", "MethodSettings", "StepContext", "build_method",
           "check_method_name"]
