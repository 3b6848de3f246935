"""Per-layer compression policies: an ordered map from parameter-name patterns to compression names.

A policy such as ``{"*.bias": "none", "embed.*": "topk0.01", "*": "qsgd4"}``
says how each named parameter's gradient travels, in
:class:`scaleml.train.GradientReducer`, ``scaleml-train
--compression-policy`` and the DDP hook (:mod:`scaleml.torch`):

- patterns are :func:`fnmatch.fnmatchcase` globs (``*``, ``?``, ``[seq]``;
  case-sensitive) matched against the whole parameter name;
- rules are tried in order and the **first** matching pattern wins;
- a parameter no pattern matches is averaged **exactly** (``none``): end a
  policy with ``"*"`` to give everything else a compression;
- the size threshold still applies: a parameter of fewer than
  ``min_compress_size`` elements (the hook's ``min_compress_numel``) is
  averaged exactly whatever its rule says;
- a pattern that takes no parameter (it matches none, or only parameters an
  earlier rule took) warns once per policy object (``UserWarning``).

Every compression name goes through
:func:`scaleml.compress.names.parse_compression`. The text form (the command
line's) is ``PATTERN=NAME`` pairs separated by commas,
``'*.bias=none,embed.*=topk0.01,*=qsgd4'``; a JSON object in the same order,
inline (``'{"*.bias": "none", "*": "qsgd4"}'``) or in a file
(``policy.json``), is read too.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .names import KINDS, CompressionSpec, parse_compression

__all__ = ["UNMATCHED", "CompressionPolicy", "PolicyRule"]

UNMATCHED = "unmatched"
"""The label of the parameters no pattern matches (averaged exactly), in per-rule counters."""


@dataclass(frozen=True)
class PolicyRule:
    """One ``pattern -> compression`` entry of a :class:`CompressionPolicy`."""

    index: int
    """Position in the policy (0 first)."""
    pattern: str
    """The fnmatch glob matched against parameter names."""
    spec: CompressionSpec
    """The parsed compression."""

    @property
    def label(self) -> str:
        """``pattern=name``: the rule's key in per-rule counters and error messages."""
        return f"{self.pattern}={self.spec.name}"


class CompressionPolicy:
    """An ordered map from parameter-name patterns to compressions (see the module's docstring).

    Build it with :meth:`parse`. Immutable, apart from the record of the
    patterns it has already warned about.

    Parameters
    ----------
    rules : sequence of (str, str)
        ``(pattern, compression name)`` pairs, in order.
    kinds : collection of str
        The compression kinds the caller runs (:data:`scaleml.compress.names.KINDS`).

    Raises
    ------
    ValueError
        For an empty policy, an empty or repeated pattern, or a compression
        name :func:`~scaleml.compress.names.parse_compression` refuses (the
        message names the pattern).
    """

    def __init__(self, rules: Sequence[tuple[str, str]], kinds: Collection[str] = KINDS) -> None:
        parsed: list[PolicyRule] = []
        seen: set[str] = set()
        for pattern, name in rules:
            if not isinstance(pattern, str) or not pattern.strip():
                raise ValueError(f"compression policy: a pattern must be a non-empty string, got {pattern!r}")
            pattern = pattern.strip()
            if pattern in seen:
                raise ValueError(f"compression policy: pattern {pattern!r} appears twice")
            seen.add(pattern)
            try:
                spec = parse_compression(name, kinds)
            except ValueError as exc:
                raise ValueError(f"compression policy, pattern {pattern!r}: {exc}") from None
            parsed.append(PolicyRule(len(parsed), pattern, spec))
        if not parsed:
            raise ValueError("compression policy: no rules (give at least one PATTERN=NAME)")
        self.rules: tuple[PolicyRule, ...] = tuple(parsed)
        self._warned: set[int] = set()

    @classmethod
    def parse(cls, policy: CompressionPolicy | Mapping[str, str] | Sequence[tuple[str, str]] | str,
              kinds: Collection[str] = KINDS) -> CompressionPolicy:
        """Read a policy from any of its forms; the one place policies are parsed and validated.

        Parameters
        ----------
        policy : CompressionPolicy, mapping, sequence of pairs or str
            A policy (returned as it is, after checking ``kinds``); a mapping
            ``{pattern: name}`` in order; ``(pattern, name)`` pairs; or text:
            ``'PAT=NAME,PAT=NAME'``, a JSON object, or the path of a JSON file
            holding one.
        kinds : collection of str
            The compression kinds the caller runs.

        Returns
        -------
        CompressionPolicy

        Raises
        ------
        ValueError
            For malformed text, an unreadable file, or any problem
            :class:`CompressionPolicy` raises.
        """
        if isinstance(policy, CompressionPolicy):
            for rule in policy.rules:
                if rule.spec.kind not in kinds:
                    raise ValueError(f"compression policy, pattern {rule.pattern!r}: compression "
                                     f"{rule.spec.name!r} is not available here")
            return policy
        if isinstance(policy, str):
            return cls(_read_text(policy), kinds)
        if isinstance(policy, Mapping):
            return cls(list(policy.items()), kinds)
        if isinstance(policy, Iterable):
            pairs = list(policy)
            if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
                raise ValueError("compression policy: expected (pattern, compression) pairs")
            return cls([(p[0], p[1]) for p in pairs], kinds)
        raise ValueError(f"compression policy must be a mapping, pairs or a string, got {type(policy).__name__}")

    # ---- matching -------------------------------------------------------------------------------

    def match(self, name: str) -> PolicyRule | None:
        """The first rule whose pattern matches ``name`` (None: no rule; the parameter goes exact)."""
        for rule in self.rules:
            if fnmatch.fnmatchcase(name, rule.pattern):
                return rule
        return None

    def assign(self, names: Sequence[str], *, warn: bool = True) -> list[PolicyRule | None]:
        """The rule of every name, in order; warn once per policy about rules that take no name.

        Parameters
        ----------
        names : sequence of str
            Parameter names.
        warn : bool
            Warn (``UserWarning``) about each pattern that takes none of
            ``names``, the first time this policy object sees it so.

        Returns
        -------
        list of PolicyRule or None
        """
        rules = [self.match(n) for n in names]
        if warn:
            taken = {r.index for r in rules if r is not None}
            for rule in self.rules:
                if rule.index not in taken and rule.index not in self._warned:
                    self._warned.add(rule.index)
                    matches = any(fnmatch.fnmatchcase(n, rule.pattern) for n in names)
                    why = "only parameters an earlier rule takes" if matches else "no parameter"
                    warnings.warn(f"compression policy: pattern {rule.pattern!r} ({rule.spec.name}) matches {why} "
                                  f"of the {len(names)}", UserWarning, stacklevel=3)
        return rules

    # ---- identity -------------------------------------------------------------------------------

    def __str__(self) -> str:
        return ",".join(rule.label for rule in self.rules)

    def __repr__(self) -> str:
        return f"CompressionPolicy({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompressionPolicy) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def to_dict(self) -> dict[str, str]:
        """The policy as an ordered ``{pattern: name}`` dict (JSON-ready; :meth:`parse` reads it back)."""
        return {rule.pattern: rule.spec.name for rule in self.rules}

    def digest(self, names: Sequence[str] = ()) -> str:
        """A short hash of the policy and of ``names`` in order: what ranks compare to agree on them."""
        text = json.dumps([[r.pattern, r.spec.name] for r in self.rules] + [list(names)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_text(text: str) -> list[tuple[str, str]]:
    """The pairs of a policy's text form: ``PAT=NAME,...``, a JSON object, or a JSON file's path."""
    stripped = text.strip()
    if not stripped.startswith("{") and "=" not in stripped and (stripped.endswith(".json") or
                                                                 os.path.isfile(stripped)):
        try:
            with open(stripped) as f:
                stripped = f.read().strip()
        except OSError as exc:
            raise ValueError(f"compression policy file {stripped!r}: {exc.strerror or exc}") from None
        if not stripped.startswith("{"):
            raise ValueError(f"compression policy file {text.strip()!r} must hold a JSON object "
                             "{pattern: compression}")
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"compression policy: malformed JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise ValueError("compression policy: the JSON must be an object {pattern: compression name}")
        return list(obj.items())
    pairs = []
    for part in stripped.split(","):
        if not part.strip():
            continue
        pattern, eq, name = part.partition("=")
        if not eq:
            raise ValueError(f"compression policy: {part.strip()!r} is not PATTERN=NAME (e.g. "
                             "'*.bias=none,*=qsgd4')")
        pairs.append((pattern.strip(), name.strip()))
    return pairs
