"""Hand-written effective-beta variants of DPO against DPO on the discover suite, fresh seeds 10-19.

    python bench/beta_variants.py [name,name,...]

Prints each variant's fitness and its paired difference to DPO per seed (mean, 95% CI) and the
per-configuration deltas: the check behind the `rescale_scalar` mutation operator.
"""

import sys

from discovery.evaluation import Evaluator
from discovery.stats import mean_ci
from discovery.tasks import get_task
from sandbox.host.local import LocalSandbox

HEAD = (
    "import math\n\nimport torch\nimport torch.nn.functional as F\n\n\n"
    "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):\n"
    "    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)\n"
)
VARIANTS = {
    "dpo": "    return -F.logsigmoid(beta * h)\n",
    "beta_half": "    return -F.logsigmoid(0.5 * beta * h)\n",
    "beta_x2": "    return -F.logsigmoid(2.0 * beta * h)\n",
    "beta_cap01": "    return -F.logsigmoid(min(beta, 0.1) * h)\n",
    "beta_fixed005": "    return -F.logsigmoid(0.05 * h)\n",
    "margin_target": "    return -F.logsigmoid(beta * h - 1.0)\n",
    "sqrt_beta": "    return -F.logsigmoid(math.sqrt(0.1 * beta) * h)\n",
}
names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(VARIANTS)
seeds = list(range(10, 20))
task = get_task("preference")
ev = Evaluator(task)
res = {}
with LocalSandbox(threads=1) as box:
    for n in ["dpo"] + [n for n in names if n != "dpo"]:
        r = ev.evaluate(HEAD + VARIANTS[n], box, "discover", seeds=seeds)
        assert r.ok, r.one_line()
        per = {}
        cfg = {}
        for c in r.configs:
            cfg[c.name] = sum(m.fitness for m in c.seeds) / len(c.seeds)
            for m in c.seeds:
                per.setdefault(m.seed, []).append(m.fitness)
        res[n] = ({s: sum(v) / len(v) for s, v in per.items()}, cfg, r.fitness.mean)
        if n != "dpo":
            d = mean_ci([res[n][0][s] - res["dpo"][0][s] for s in seeds])
            cd = {k: round(cfg[k] - res["dpo"][1][k], 3) for k in cfg}
            print(f"{n:16s} fit {r.fitness.mean:.3f} diff {d.mean:+.3f} [{d.low:+.3f},{d.high:+.3f}] {cd}", flush=True)
        else:
            print(f"dpo fit {r.fitness.mean:.3f} {res[n][1]}", flush=True)
