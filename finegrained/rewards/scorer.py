"""Score a batch of completions with every category at once.

``RewardScorer.from_config(reward_cfg)`` builds one judge per category (a trained reward-model directory
via ``model:``, or a Python callable via ``judge: {_target_: ...}``); ``scorer(prompts, completions)``
returns a ``RewardBreakdown``. Each completion is segmented once per (segmentation, granularity); each
judge is called once per batch (the reward models batch internally, one forward pass per batch).

Rewards per category (``weight`` w):
- span, mode ``hard``: +w for a clean segment, -w for an erroneous one (p_error > 0.5), as in Wu et al.;
- span, mode ``soft``: w x (1 - 2 p_error);
- span, mode ``penalty``: 0 for a clean segment, -w for an erroneous one (no reward for merely adding
  clean segments, so no incentive to lengthen answers);
- preference: w x (score - mean) / std, with mean and std saved by ``train-rm`` (or given for a rule).

Reward config::

    segmentation: {sentence: sentencizer, split_after: ",;:!?", min_words: 5}   # for rule judges
    span_mode: hard                  # default mode of span categories (a category's own ``mode`` wins)
    categories:
      relevance:    {model: outputs/rm/relevance, weight: 0.3}
      no_zebra:     {kind: span, granularity: sentence, weight: 1.0,
                     judge: {_target_: finegrained.rewards.rule_based.contains_words, words: [zebra]}}
      short:        {kind: preference, granularity: sequence, weight: 0.5, normalisation: {mean: 0, std: 1},
                     judge: {_target_: finegrained.rewards.rule_based.target_length, target_words: 40}}

Categories on one shared backbone (a joint reward model, ``train-rm categories=[...]``) name the same
directory; each entry's key must be one of the model's categories. The directory is loaded once and
judges all of its categories in one forward pass per batch::

    categories:
      relevance:    {model: outputs/rm/joint, weight: 0.3}
      factuality:   {model: outputs/rm/joint, weight: 0.5}
      completeness: {model: outputs/rm/joint, weight: 0.3}

A category whose ``model`` is explicitly null/empty, or whose ``weight`` is 0, is skipped (listed in
``RewardScorer.skipped``), so a reward config can list categories that an override fills in or switches
off; ``model: ???`` (Hydra's "must be set") is an error naming the key to set. Model categories take
kind, granularity, segmentation and normalisation from the model's ``finegrained.json``; ``kind`` or
``granularity`` given next to ``model`` must agree with it.

Preference categories: ``CategoryRewards.segments`` holds the stripped sequence span, or ``(0, 0)`` for a
blank completion, so every completion keeps exactly one reward (``place_rewards`` puts sequence rewards on
EOS whatever the span says).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import FinegrainedError
from .types import CategoryRewards, RewardBreakdown
from ..schema import DEFAULT_SPLIT_AFTER, GRANULARITIES, SUB_SENTENCE_RULES, SegmentationConfig
from ..segment import get_segmenter, sequence_span

log = logging.getLogger(__name__)

MODES = ("hard", "soft", "penalty")
_MISSING = "???"  # OmegaConf's marker for a mandatory value left unset
_ENTRY_KEYS = {"model", "judge", "kind", "granularity", "weight", "mode", "normalisation"}


class NonFiniteJudgementError(FinegrainedError):
    """A judge returned NaN or an infinite value (in every span mode: ``p > 0.5`` is False for NaN, so a
    ``hard`` or ``penalty`` reward would silently call the segment clean)."""


@dataclass
class CategoryScorer:
    """One active category: its judge and how its judgements become rewards."""

    name: str
    kind: str  # span | preference
    granularity: str
    weight: float
    mode: str  # span categories: hard | soft
    judge: Callable
    segmentation: SegmentationConfig
    mean: float = 0.0
    std: float = 1.0

    def span_rewards(self, p_error: list[float]) -> list[float]:
        """Per-segment rewards of one completion from its per-segment error probabilities."""
        if self.mode == "hard":
            return [-self.weight if p > 0.5 else self.weight for p in p_error]
        if self.mode == "penalty":
            return [-self.weight if p > 0.5 else 0.0 for p in p_error]
        return [self.weight * (1.0 - 2.0 * p) for p in p_error]

    def preference_reward(self, score: float) -> float:
        """The normalised, weighted reward of one raw preference score."""
        return self.weight * (score - self.mean) / self.std


def _plain(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def parse_segmentation(raw: Mapping | None) -> SegmentationConfig:
    """The ``segmentation`` block of a reward config (used by rule judges) as a ``SegmentationConfig``."""
    if raw is not None and not isinstance(raw, Mapping):
        raise FinegrainedError(f"reward.segmentation: expected a mapping, got {raw!r}")
    raw = dict(raw or {})
    unknown = set(raw) - {"sentence", "split_after", "min_words", "language", "rule"}
    if unknown:
        raise FinegrainedError(f"reward.segmentation: unknown key(s) {sorted(unknown)}")
    rule = raw.get("rule", "finegrained")
    if rule not in SUB_SENTENCE_RULES:
        raise FinegrainedError(f"reward.segmentation.rule: {rule!r}: must be one of {', '.join(SUB_SENTENCE_RULES)}")
    raw.setdefault("split_after", DEFAULT_SPLIT_AFTER[rule])  # the rule's own default, as in a schema
    return SegmentationConfig(**raw)


def _number(where: str, value, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool):
        raise FinegrainedError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FinegrainedError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise FinegrainedError(f"{where}: expected a finite number, got {value!r}")
    return number


def _normalisation(where: str, raw) -> tuple[float, float]:
    if raw is None:
        return 0.0, 1.0
    if not isinstance(raw, Mapping):
        raise FinegrainedError(f"{where}: expected {{mean: <number>, std: <number>}}, got {raw!r}")
    unknown = set(raw) - {"mean", "std"}
    if unknown:
        raise FinegrainedError(f"{where}: unknown key(s) {sorted(unknown)} (expected mean, std)")
    mean = _number(f"{where}.mean", raw.get("mean"), 0.0)
    std = _number(f"{where}.std", raw.get("std"), 1.0)
    if not std > 0:
        raise FinegrainedError(f"{where}: normalisation std must be positive, got {std}")
    return mean, std


def _build_category(
    name: str, entry, default_mode: str, segmentation: SegmentationConfig, device, loaded: dict | None = None
) -> CategoryScorer | None:
    """The scorer of one config entry, or None when the entry is switched off (weight 0 / model null).

    ``loaded`` caches judges by model directory, so categories of one joint model share it.
    """
    where = f"reward.categories.{name}"
    if entry is None:
        entry = {}
    if not isinstance(entry, Mapping):
        raise FinegrainedError(f"{where}: expected a mapping such as {{model: <dir>, weight: 1.0}}, got {entry!r}")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise FinegrainedError(f"{where}: unknown key(s) {sorted(unknown)} (expected {', '.join(sorted(_ENTRY_KEYS))})")
    weight = _number(f"{where}.weight", entry.get("weight"), 1.0)
    if weight == 0.0:
        return None
    model, judge_cfg = entry.get("model"), entry.get("judge")
    if model == _MISSING:
        raise FinegrainedError(
            f"{where}.model: not set; give {where}.model=<reward model dir> "
            f"(or {where}.model=null or {where}.weight=0 to leave the category out)"
        )
    if "model" in entry and not model and not judge_cfg:
        return None  # explicitly emptied by an override: the category is switched off
    mode = entry.get("mode") or default_mode
    if mode not in MODES:
        raise FinegrainedError(f"{where}.mode: unknown mode {mode!r} (expected hard, soft or penalty)")
    if bool(model) == bool(judge_cfg):
        raise FinegrainedError(f"{where}: give exactly one of model=<reward model dir> or judge={{_target_: ...}}")
    if model:
        judge, kind, granularity, seg, norm = _model_judge(where, name, entry, model, device, loaded)
    else:
        judge, kind, granularity, seg, norm = _rule_judge(where, entry, judge_cfg, segmentation)
    mean, std = _normalisation(f"{where}.normalisation", norm)
    return CategoryScorer(name, kind, granularity, weight, mode, judge, seg, mean, std)


def _model_judge(where: str, name: str, entry, model, device, loaded: dict | None):
    """``(judge, kind, granularity, segmentation, normalisation)`` of an entry naming a reward-model directory
    (``loaded`` caches judges by directory, so categories of one joint model share it)."""
    if not (Path(str(model)) / "finegrained.json").is_file():
        raise FinegrainedError(
            f"{where}.model: {model} is not a reward-model directory (no finegrained.json); "
            "train one with 'finegrained train-rm'"
        )
    from .inference import load_judge
    from .joint_model import JointJudge

    loaded = {} if loaded is None else loaded
    key = str(Path(str(model)).resolve())
    if key not in loaded:
        loaded[key] = load_judge(str(model), device=device)
    judge = loaded[key]
    if isinstance(judge, JointJudge):
        if name not in judge.categories:
            raise FinegrainedError(
                f"{where}.model: {model} is a joint reward model of {', '.join(judge.categories)}; "
                f"it has no category {name!r} (name the entry after one of them)"
            )
        judge = judge.view(name)
    kind, granularity, seg = judge.kind, judge.granularity, judge.segmentation
    for key, actual in (("kind", kind), ("granularity", granularity)):
        given = entry.get(key)
        if given is not None and given != actual:
            raise FinegrainedError(f"{where}.{key}: {given!r} but the reward model {model} is {actual!r}")
    if kind == "preference":
        if entry.get("normalisation") is not None:
            norm = entry.get("normalisation")  # an explicit override of the saved statistics
        else:
            norm = judge.normalisation
            if norm is None:
                log.warning("%s: the reward model %s has no saved normalisation; using mean 0, std 1", where, model)
    else:
        norm = None
    return judge, kind, granularity, seg, norm


def _rule_judge(where: str, entry, judge_cfg, segmentation: SegmentationConfig):
    """``(judge, kind, granularity, segmentation, normalisation)`` of an entry naming a rule judge (``judge:``)."""
    kind, granularity = entry.get("kind"), entry.get("granularity")
    if kind not in ("span", "preference"):
        raise FinegrainedError(f"{where}.kind: a rule judge needs kind: span or preference, got {kind!r}")
    if granularity not in GRANULARITIES or (kind == "preference") != (granularity == "sequence"):
        raise FinegrainedError(
            f"{where}.granularity: got {granularity!r}; expected sequence for a preference category, "
            f"sub_sentence or sentence for a span category"
        )
    if not isinstance(judge_cfg, Mapping) or "_target_" not in judge_cfg:
        raise FinegrainedError(f"{where}.judge: expected {{_target_: <module.factory>, ...arguments}}, got {judge_cfg!r}")
    return _instantiate_judge(where, judge_cfg), kind, granularity, segmentation, entry.get("normalisation")


def _instantiate_judge(where: str, judge_cfg: Mapping) -> Callable:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        judge = instantiate(dict(judge_cfg), _convert_="all")
    except InstantiationException as e:
        raise FinegrainedError(f"{where}.judge: cannot build the judge {judge_cfg.get('_target_')!r}: {e}") from None
    if not callable(judge):
        raise FinegrainedError(f"{where}.judge: {judge_cfg.get('_target_')!r} did not return a callable judge")
    return judge


class RewardScorer:
    """Every category's judge; ``scorer(prompts, completions) -> RewardBreakdown`` (categories in config order).

    Attributes:
        categories: the active categories, in config order.
        skipped: names of the categories switched off in the config (weight 0 or model null).
        last_timings: seconds spent by the last call, ``{"segment": ..., "score": ...}``.
        joint_models: the distinct joint reward models (``JointJudge``) behind the categories, each called
            once per batch for all its categories.
    """

    def __init__(self, categories: Sequence[CategoryScorer], skipped: Sequence[str] = ()):
        if not categories:
            raise FinegrainedError("reward config has no active category (all weights 0, models null, or none listed)")
        self.categories = list(categories)
        self.skipped = list(skipped)
        self.last_timings = {"segment": 0.0, "score": 0.0}
        self.joint_models = _joint_parents(self.categories)

    @classmethod
    def from_config(cls, reward_cfg, device=None) -> RewardScorer:
        """Build every active category's judge from a reward config (DictConfig or dict); see the module doc."""
        if reward_cfg is None:
            raise FinegrainedError("no reward config given (reward=<rule_based|fine_grained|holistic|...>)")
        cfg = _plain(reward_cfg)
        segmentation = parse_segmentation(cfg.get("segmentation"))
        default_mode = cfg.get("span_mode") or "hard"
        if default_mode not in MODES:
            raise FinegrainedError(f"reward.span_mode: unknown mode {default_mode!r} (expected hard, soft or penalty)")
        entries = cfg.get("categories") or {}
        if not isinstance(entries, Mapping):
            raise FinegrainedError("reward.categories must be a mapping of category name -> settings")
        active, skipped, loaded = [], [], {}
        for name, entry in entries.items():
            built = _build_category(str(name), entry, default_mode, segmentation, device, loaded)
            if built is None:
                skipped.append(str(name))
            else:
                active.append(built)
        if skipped:
            log.info("reward categories switched off (weight 0 or model null): %s", ", ".join(skipped))
        return cls(active, skipped)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> RewardBreakdown:
        """Judge a batch of B completions with every active category.

        Each completion is segmented once per distinct (segmentation, granularity) and each judge is
        called exactly once for the whole batch (a joint reward model once for all its categories). Returns a ``RewardBreakdown`` whose categories follow
        the config order (the K axis of the placed (B, T, K) rewards); ``last_timings`` is updated.
        """
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        started = time.perf_counter()
        segments = self._segment(completions)
        segmented = time.perf_counter()
        joint = self._score_joint(prompts, completions, segments)
        result = RewardBreakdown()
        for c in self.categories:
            if c.kind == "span":
                segs = [list(s) for s in segments[(c.segmentation, c.granularity)]]
                rows = joint[c.name] if c.name in joint else c.judge(prompts, completions, segs)
                p_error = [[float(p) for p in row] for row in rows]
                _check_judgement_shape(c.name, [len(p) for p in p_error], [len(s) for s in segs])
                _check_judgements_finite(c.name, "error probability", p_error)
                rewards = [c.span_rewards(p) for p in p_error]
                result.categories[c.name] = CategoryRewards(c.name, c.granularity, "span", segs, rewards, p_error=p_error)
            else:
                scores = [float(s) for s in (joint[c.name] if c.name in joint else c.judge(prompts, completions))]
                if len(scores) != len(completions):
                    raise FinegrainedError(
                        f"reward category {c.name!r}: its judge returned {len(scores)} scores for {len(completions)} completions"
                    )
                _check_judgements_finite(c.name, "score", [[s] for s in scores])
                # One reward per completion; a blank completion still gets one, on the span (0, 0).
                segs = [sequence_span(t) or [(0, 0)] for t in completions]
                rewards = [[c.preference_reward(s)] for s in scores]
                result.categories[c.name] = CategoryRewards(c.name, c.granularity, "preference", segs, rewards, raw_scores=scores)
        self.last_timings = {"segment": segmented - started, "score": time.perf_counter() - segmented}
        return result

    def _score_joint(self, prompts: list[str], completions: list[str], segments) -> dict[str, list]:
        """One call per joint reward model for all its categories: ``{category: judgements}``."""
        out: dict[str, list] = {}
        for parent in self.joint_models:
            given = {g: segments[(parent.segmentation, g)] for g in parent.span_granularities}
            scored = parent.score(prompts, completions, given)
            out.update({c.name: scored[c.name] for c in self.categories if getattr(c.judge, "parent", None) is parent})
        return out

    def _segment(self, completions: list[str]) -> dict[tuple[SegmentationConfig, str], list]:
        wanted: dict[SegmentationConfig, set[str]] = {}
        for c in self.categories:
            if c.kind == "span":
                wanted.setdefault(c.segmentation, set()).add(c.granularity)
        for parent in self.joint_models:  # its input carries markers of every span granularity it has
            wanted.setdefault(parent.segmentation, set()).update(parent.span_granularities)
        out = {}
        for seg_cfg, granularities in wanted.items():
            many = get_segmenter(seg_cfg).segment_many(completions, sorted(granularities))
            out.update({(seg_cfg, g): many[g] for g in granularities})
        return out


def _joint_parents(categories: Sequence[CategoryScorer]) -> list:
    """The distinct joint reward models behind ``categories``, in order of first use."""
    from .joint_model import JointCategoryJudge

    parents = []
    for c in categories:
        if isinstance(c.judge, JointCategoryJudge) and all(c.judge.parent is not p for p in parents):
            parents.append(c.judge.parent)
    return parents


def _check_judgement_shape(name: str, got: list[int], expected: list[int]) -> None:
    """A span judge must return one judgement per segment for every completion."""
    if len(got) != len(expected):
        raise FinegrainedError(f"reward category {name!r}: its judge returned {len(got)} rows for {len(expected)} completions")
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            raise FinegrainedError(f"reward category {name!r}: its judge returned {g} judgements for the {e} segments of sample {i}")


def _check_judgements_finite(name: str, what: str, rows: list[list[float]]) -> None:
    """Every judgement (per completion, per segment) must be a finite number."""
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            if not math.isfinite(value):
                where = f"sample {i}" if len(row) == 1 and what == "score" else f"segment {j} of sample {i}"
                raise NonFiniteJudgementError(f"category {name!r}: its judge returned a non-finite {what} ({value}) for {where}")


def has_non_finite(breakdown: RewardBreakdown) -> str | None:
    """The name of the first category with a NaN or infinite reward, or None."""
    for name, c in breakdown.categories.items():
        if any(not math.isfinite(r) for rs in c.rewards for r in rs):
            return name
    return None
