import os

from hypothesis import settings

# "ci" is deterministic, so a red test stays red; "slow" searches wider (HYPOTHESIS_PROFILE=slow).
settings.register_profile("ci", derandomize=True, max_examples=150, deadline=None)
settings.register_profile("slow", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
