"""One proposer per decoding method; `make_proposer` checks a method's options by name."""
from __future__ import annotations

import inspect

from ..engine import Proposer
from ..errors import SpecbenchError
from .eagle import Eagle
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
}


def make_proposer(method: str, model, **options) -> Proposer:
    if method not in STRATEGIES:
        raise SpecbenchError(f"unknown method {method!r}: choose one of {', '.join(STRATEGIES)}")
    cls = STRATEGIES[method]
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "model")]
    for name in options:
        if name not in accepted:
            raise SpecbenchError(f"unknown option {name!r} for method {method!r}"
                                 f" (options: {', '.join(accepted) or 'none'})")
    if "model" in inspect.signature(cls.__init__).parameters:
        return cls(model, **options)
    return cls(**options)
