"""How every figure draws a run: a colour per backbone (one per run in turn) and a line style per mode."""

COLOURS = {"random": ["tab:gray", "black", "silver"],
           "simsiam": ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]}
LINESTYLES = {"frozen": "-", "finetune": "--"}
