"""Routing as data: which model analyses a study, and which of its series it gets.

The rules file (YAML) is validated when it is loaded, regular expressions compiled then, and every
error names the rule. For a study, the first rule with at least one fitting series wins; among the
fitting series the rule's ``prefer`` order picks one (default: most slices, then thinnest
slices). Every other series gets a reason why it was not chosen. A rule with ``called_ae_titles``
applies only to studies received on one of those called AE titles.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from inference.dicom_series import MIN_SLICES, SeriesError, stack_geometry
from inference.manifest import MODEL_ID_PATTERN, SEMVER_PATTERN, error_message
from tamsoat.core.settings import AE_TITLE_PATTERN


class RoutingError(ValueError):
    """The routing rules cannot be used; the message names the file and the rule."""


class Preference(StrEnum):
    MOST_SLICES = "most_slices"
    THINNEST_SLICES = "thinnest_slices"


class Orientation(StrEnum):
    AXIAL = "axial"
    ANY = "any"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_patterns(v: dict[str, str]) -> dict[str, str]:
    for keyword, pattern in v.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is not a DICOM attribute keyword")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{keyword}: {pattern!r} is not a valid regular expression ({exc})") from None
    return v


class SeriesRequirements(_Strict):
    """What a series must be like for the rule's model."""

    min_slices: int = Field(default=MIN_SLICES, ge=MIN_SLICES)
    image_type_contains: list[str] = Field(default_factory=lambda: ["ORIGINAL"])
    orientation: Orientation = Orientation.AXIAL
    max_tilt_deg: float = Field(default=10.0, ge=0.0, le=90.0, description="slice normal vs. patient z")
    max_slice_spacing_mm: float | None = Field(default=None, gt=0.0)


class Rule(_Strict):
    """One routing rule. ``match``/``exclude``: DICOM keyword -> regex on the whole value."""

    name: str = Field(min_length=1, max_length=64)
    model: str = Field(pattern=MODEL_ID_PATTERN)
    model_version: str | None = Field(default=None, pattern=SEMVER_PATTERN)
    match: dict[str, str] = Field(default_factory=dict)
    exclude: dict[str, str] = Field(default_factory=dict)
    series: SeriesRequirements = Field(default_factory=SeriesRequirements)
    prefer: list[Preference] = Field(
        default_factory=lambda: [Preference.MOST_SLICES, Preference.THINNEST_SLICES]
    )
    called_ae_titles: list[str] | None = Field(
        default=None,
        description="the rule applies only to studies received on one of these called AE titles",
    )

    _match: dict[str, re.Pattern[str]] = PrivateAttr(default_factory=dict)
    _exclude: dict[str, re.Pattern[str]] = PrivateAttr(default_factory=dict)

    @field_validator("match", "exclude")
    @classmethod
    def _patterns(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_patterns(v)

    @field_validator("called_ae_titles")
    @classmethod
    def _ae_titles(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("an empty list matches no study (leave the key out to match any called AE title)")
        for title in v:
            if not re.fullmatch(AE_TITLE_PATTERN, title) or not title.strip():
                raise ValueError(f"{title!r} is not an AE title (1 to 16 printable ASCII characters, no backslash)")
        return [t.strip() for t in v]

    def called_ae_mismatch(self, called_ae_title: str | None) -> str | None:
        """Why the rule does not apply to a study received on ``called_ae_title`` (None: unknown);
        None when it applies."""
        if self.called_ae_titles is None:
            return None
        wanted = ", ".join(self.called_ae_titles)
        if called_ae_title is None or not called_ae_title.strip():
            return f"the study's called AE title is unknown (the rule is for {wanted})"
        if called_ae_title.strip() not in self.called_ae_titles:
            return f"received on called AE title {called_ae_title.strip()!r}, not on {wanted}"
        return None

    def model_post_init(self, context: Any, /) -> None:
        self._match = {k: re.compile(p, re.IGNORECASE) for k, p in self.match.items()}
        self._exclude = {k: re.compile(p, re.IGNORECASE) for k, p in self.exclude.items()}

    @property
    def match_patterns(self) -> dict[str, re.Pattern[str]]:
        """``match``, compiled (case-insensitive) when the rule was loaded."""
        return self._match

    @property
    def exclude_patterns(self) -> dict[str, re.Pattern[str]]:
        return self._exclude


class RoutingRules(_Strict):
    """The rules file: an ordered list of rules; the first that fits a study wins."""

    rules: list[Rule] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[Rule]) -> list[Rule]:
        names = [r.name for r in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique ({', '.join(dupes)} repeated)")
        return v

    def model_ids(self) -> set[str]:
        """The models the rules refer to (check them against the registry at start-up)."""
        return {r.model for r in self.rules}

    def called_ae_titles(self) -> set[str]:
        """The called AE titles rules select on (check them against the SCP's titles at start-up)."""
        return {t for r in self.rules for t in r.called_ae_titles or ()}


def _describe(exc: ValidationError, data: Any) -> str:
    parts = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(x) for x in loc)
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            raw = data.get("rules", [])[loc[1]] if isinstance(data, dict) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            rule = f"rule {name!r}" if name else f"rule #{loc[1] + 1}"
            where = f"{rule}: " + (".".join(str(x) for x in loc[2:]) or "(rule)")
        parts.append(f"{where}: {error_message(err)}")
    return "; ".join(parts)


def parse_rules(data: Any, source: str = "routing rules") -> RoutingRules:
    try:
        return RoutingRules.model_validate(data)
    except ValidationError as exc:
        raise RoutingError(f"{source} are invalid: {_describe(exc, data)}") from exc


def load_rules(path: Path) -> RoutingRules:
    """Read and validate a routing rules file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RoutingError(f"cannot read routing rules {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise RoutingError(f"routing rules {path} are not valid YAML: {exc}") from exc
    return parse_rules(data, source=f"routing rules {path}")


@dataclass(frozen=True)
class RoutingDecision:
    """The chosen model and series, and why every other series of the study was not chosen."""

    rule_name: str
    model_id: str
    model_version: str | None
    series_instance_uid: str
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Candidate:
    uid: str
    slices: int
    spacing_mm: float

    def describe(self) -> str:
        return f"{self.slices} slices, {self.spacing_mm:.2f} mm apart"


def _value(header: Dataset, keyword: str) -> str:
    value = header.get(keyword)
    if value is None:
        return ""
    if isinstance(value, str | bytes):
        return value.decode(errors="replace") if isinstance(value, bytes) else value
    if isinstance(value, Sequence):
        return "\\".join(str(v) for v in value)
    return str(value)


def _check(rule: Rule, uid: str, headers: Sequence[Dataset]) -> _Candidate | str:
    """A candidate when the series fits ``rule``; otherwise the reason it does not."""
    if not headers:
        return "the series has no instances"
    first = headers[0]
    for keyword, pattern in rule.match_patterns.items():
        value = _value(first, keyword)
        if not pattern.fullmatch(value):
            return f"{keyword} {value!r} does not match {pattern.pattern!r}"
    for keyword, pattern in rule.exclude_patterns.items():
        value = _value(first, keyword)
        if pattern.fullmatch(value):
            return f"{keyword} {value!r} is excluded by {pattern.pattern!r}"
    req = rule.series
    if len(headers) < req.min_slices:
        return f"{len(headers)} slices, fewer than the {req.min_slices} required"
    for wanted in req.image_type_contains:
        lacking = sum(
            1 for h in headers if wanted.upper() not in {v.upper() for v in _value(h, "ImageType").split("\\")}
        )
        if lacking:
            return f"ImageType lacks {wanted} in {lacking} of {len(headers)} instances"
    try:
        geometry = stack_geometry(headers, req.min_slices)
    except SeriesError as exc:
        return f"cannot be made into a volume: {exc}"
    if req.orientation is Orientation.AXIAL:
        normal = geometry.affine[:3, 2] / np.linalg.norm(geometry.affine[:3, 2])
        tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
        if tilt > req.max_tilt_deg:
            return f"not axial (slice normal {tilt:.1f} degrees from the patient's z axis)"
    if req.max_slice_spacing_mm is not None and geometry.slice_spacing_mm > req.max_slice_spacing_mm:
        return f"slices {geometry.slice_spacing_mm:.2f} mm apart, more than {req.max_slice_spacing_mm} mm"
    return _Candidate(uid=uid, slices=len(headers), spacing_mm=geometry.slice_spacing_mm)


def _rank(rule: Rule, candidates: list[_Candidate]) -> list[_Candidate]:
    def key(c: _Candidate) -> tuple[float | str, ...]:
        parts: list[float | str] = []
        for p in rule.prefer:
            parts.append(-c.slices if p is Preference.MOST_SLICES else round(c.spacing_mm, 3))
        return (*parts, c.uid)

    return sorted(candidates, key=key)


class Router:
    """Applies routing rules to the series of a study."""

    def __init__(self, rules: RoutingRules) -> None:
        self.rules = rules

    @classmethod
    def from_file(cls, path: Path) -> Router:
        return cls(load_rules(path))

    def evaluate(
        self, series: Mapping[str, Sequence[Dataset]], *, called_ae_title: str | None = None
    ) -> tuple[RoutingDecision | None, dict[str, str]]:
        """The decision (None when no rule fits) and why each other series was not chosen.

        ``called_ae_title``: the AE title the study was received on; None (unknown) means rules with
        ``called_ae_titles`` do not apply.
        """
        why_not: dict[str, list[str]] = {uid: [] for uid in series}
        for rule in self.rules.rules:
            mismatch = rule.called_ae_mismatch(called_ae_title)
            if mismatch is not None:
                for reasons_so_far in why_not.values():
                    reasons_so_far.append(f"rule {rule.name!r}: {mismatch}")
                continue
            candidates: list[_Candidate] = []
            reasons: dict[str, str] = {}
            for uid, headers in series.items():
                result = _check(rule, uid, headers)
                if isinstance(result, str):
                    reasons[uid] = result
                    why_not[uid].append(f"rule {rule.name!r}: {result}")
                else:
                    candidates.append(result)
            if not candidates:
                continue
            best, *others = _rank(rule, candidates)
            for other in others:
                reasons[other.uid] = (
                    f"series {best.uid} is preferred ({best.describe()}, this one {other.describe()})"
                )
            skipped = {uid: f"rule {rule.name!r}: {r}" for uid, r in reasons.items()}
            decision = RoutingDecision(
                rule_name=rule.name,
                model_id=rule.model,
                model_version=rule.model_version,
                series_instance_uid=best.uid,
                skipped=skipped,
            )
            return decision, skipped
        return None, {uid: "; ".join(r) for uid, r in why_not.items()}

    def route(
        self, series: Mapping[str, Sequence[Dataset]], *, called_ae_title: str | None = None
    ) -> RoutingDecision | None:
        """Pick the model and the series for a study (series UID -> its instance headers).

        None when no rule fits any series; ``explain`` then says why for each series.
        """
        return self.evaluate(series, called_ae_title=called_ae_title)[0]

    def explain(
        self, series: Mapping[str, Sequence[Dataset]], *, called_ae_title: str | None = None
    ) -> dict[str, str]:
        """Why each series was not chosen (every series when no rule fits)."""
        return self.evaluate(series, called_ae_title=called_ae_title)[1]


def group_by_series(headers: Sequence[Dataset]) -> dict[str, list[Dataset]]:
    """Group instance headers by SeriesInstanceUID, keeping their order."""
    grouped: dict[str, list[Dataset]] = {}
    for h in headers:
        grouped.setdefault(str(h.get("SeriesInstanceUID", "")), []).append(h)
    return grouped
