"""One proposer per decoding method; `make_proposer` builds one after checking its options
against the strategy's signature (`specbench.options`)."""
from __future__ import annotations

import inspect

from ..engine import Proposer
from .eagle import Eagle, Eagle3
from .early_exit import EarlyExit
from .lookahead import Lookahead
from .medusa import Medusa
from .pld import PromptLookup
from .sps import DraftModel
from .vanilla import Vanilla

STRATEGIES: dict[str, type[Proposer]] = {
    "vanilla": Vanilla,
    "pld": PromptLookup,
    "sps": DraftModel,
    "early_exit": EarlyExit,
    "lookahead": Lookahead,
    "medusa": Medusa,
    "eagle": Eagle,
    "eagle3": Eagle3,
}


def make_proposer(method: str, model, **options) -> Proposer:
    from ..options import parse_options, strategy
    cls = strategy(method)
    options = parse_options(method, options)
    return cls(model, **options) if "model" in inspect.signature(cls.__init__).parameters else cls(**options)
