"""CI check: the demo's test metrics reach the bar the project promises."""

import json
import sys

metrics = json.load(open("metrics/eval.json"))
print(f"CI: test accuracy {metrics['accuracy']}, macro-F1 {metrics['macro_f1']}")
if metrics["accuracy"] < 0.95:
    sys.exit("CI: demo test accuracy is below 0.95")
