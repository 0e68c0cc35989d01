"""Policies by spec: a built-in name, a Python class, or an HTTP service.

``load_policy(spec)`` makes a fresh policy from its spec (every cohort gets its own, ``scenarios/policy.py``):

- ``random``, ``logged``, ``popular``, ``segment-greedy``, ``epsilon-greedy``, ``thompson`` (``builtin.py``),
  with options after a colon: ``epsilon-greedy:epsilon=0.05``;
- ``package.module:Class`` or ``path/to/file.py:Class``, options likewise (``file.py:Class:alpha=2``) passed
  to the class as keyword arguments (numbers and true/false are converted);
- ``http://HOST:PORT/PATH`` (or https): one JSON POST per decision (``http.py``, ``docs/recommenders.md``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from twinsim.scenarios.policy import Policy, PolicyError

EXAMPLES = ("random, epsilon-greedy:epsilon=0.1, mypackage.recs:MyPolicy, policies/mine.py:MyPolicy, "
            "http://127.0.0.1:8080/recommend")


def load_policy(spec: str, **http_options) -> Policy:
    """A fresh policy from ``spec`` (see the module's docstring); ``http_options`` go to an HTTP policy
    (``concurrency``, ``timeout_s``, ``fallback``)."""
    from twinsim.scenarios.policies import builtin

    spec = str(spec).strip()
    if spec.startswith(("http://", "https://")):
        from twinsim.scenarios.policies.http import HttpPolicy

        return HttpPolicy(spec, **http_options)
    name, _, options = spec.partition(":")
    if name in builtin.BUILTINS:
        return _construct(builtin.BUILTINS[name], _options(options, spec), spec)
    if not options:
        raise PolicyError(f"--policy {spec!r}: not a built-in policy ({', '.join(builtin.BUILTINS)}), a Python "
                          f"class (module:Class or file.py:Class) or an http:// URL; e.g. {EXAMPLES}")
    cls_name, _, options = options.partition(":")
    return _construct(_import_class(name, cls_name, spec), _options(options, spec), spec)


def policy_name(spec: str) -> str:
    """A short name for ``spec`` (report columns, directory names): the built-in or class name with its options."""
    spec = str(spec).strip()
    if spec.startswith(("http://", "https://")):
        return "http-" + spec.split("://", 1)[1].replace("/", "-").replace(":", "-").strip("-")
    head, _, rest = spec.partition(":")
    name = Path(head).stem if head.endswith(".py") else head
    from twinsim.scenarios.policies import builtin

    if head not in builtin.BUILTINS and rest:
        name, _, rest = rest.partition(":")
    return name + (f"[{rest}]" if rest else "")


def _import_class(module: str, cls_name: str, spec: str):
    where = f"--policy {spec!r}"
    try:
        if module.endswith(".py"):
            path = Path(module)
            if not path.is_file():
                raise PolicyError(f"{where}: no file {path} (a path to a .py file: policies/mine.py:MyPolicy)")
            key = f"twinsim_policy_{abs(hash(str(path.resolve())))}"
            loader = importlib.util.spec_from_file_location(key, path)
            mod = importlib.util.module_from_spec(loader)
            sys.modules[key] = mod
            loader.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
    except PolicyError:
        raise
    except Exception as e:  # an import error in the user's code: name it, with its own message
        raise PolicyError(f"{where}: importing {module} failed: {type(e).__name__}: {e}") from e
    if not hasattr(mod, cls_name):
        raise PolicyError(f"{where}: {module} has no {cls_name!r} (it has: "
                          f"{', '.join(n for n in dir(mod) if not n.startswith('_'))[:300]})")
    return getattr(mod, cls_name)


def _options(text: str, spec: str) -> dict:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise PolicyError(f"--policy {spec!r}: option {item!r} is not key=value (e.g. epsilon-greedy:epsilon=0.1)")
        out[key.strip().replace("-", "_")] = _value(value.strip())
    return out


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _construct(cls, options: dict, spec: str) -> Policy:
    try:
        policy = cls(**options)
    except (TypeError, ValueError) as e:
        raise PolicyError(f"--policy {spec!r}: {e} (options go to the class as keyword arguments, separated by "
                          "commas: epsilon-greedy:epsilon=0.1,by=segment)") from e
    if not callable(getattr(policy, "decide", None)):
        raise PolicyError(f"--policy {spec!r}: {type(policy).__name__} has no decide(batch) method; a policy answers "
                          "a DecisionBatch with one action per request (docs/recommenders.md)")
    if not getattr(policy, "name", None):
        try:
            policy.name = policy_name(spec)
        except AttributeError:
            pass
    return policy
