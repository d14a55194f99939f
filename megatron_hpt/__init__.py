"""megatron-hpt: one policy-gradient loss head (SFT, GRPO family, LUFFY, SRFT, CHORD, HPT, EGSPO)
on megatron-core, with rollout engines and Hugging Face conversion tools."""
import warnings

# megatron-core announces at import time every optional accelerator package it did not find;
# on CPU machines (tests, laptops) that is expected, so these notices are silenced.
for _msg in ("Transformer Engine and Apex are not installed", "Apex is not installed",
             "full scope is deprecated", "Please use DTensor instead",
             "`load_state_dict` is deprecated"):
    warnings.filterwarnings("ignore", message=f".*{_msg}.*")
