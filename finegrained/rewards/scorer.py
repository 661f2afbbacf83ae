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
    span_mode: hard
    categories:
      relevance:    {model: outputs/rm/relevance, weight: 0.3}
      no_zebra:     {kind: span, granularity: sentence, weight: 1.0,
                     judge: {_target_: finegrained.rewards.rule_based.contains_words, words: [zebra]}}
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import FinegrainedError
from ..rl.types import CategoryRewards, RewardBreakdown
from ..schema import GRANULARITIES, SegmentationConfig
from ..segment import get_segmenter, sequence_span

MODES = ("hard", "soft", "penalty")
_ENTRY_KEYS = {"model", "judge", "kind", "granularity", "weight", "mode", "normalisation"}


@dataclass
class CategoryScorer:
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
        if self.mode == "hard":
            return [-self.weight if p > 0.5 else self.weight for p in p_error]
        if self.mode == "penalty":
            return [-self.weight if p > 0.5 else 0.0 for p in p_error]
        return [self.weight * (1.0 - 2.0 * p) for p in p_error]

    def preference_reward(self, score: float) -> float:
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
    raw = dict(raw or {})
    unknown = set(raw) - {"sentence", "split_after", "min_words", "language"}
    if unknown:
        raise FinegrainedError(f"reward.segmentation: unknown key(s) {sorted(unknown)}")
    return SegmentationConfig(**raw)


def _build_category(name: str, entry: Mapping, default_mode: str, segmentation: SegmentationConfig, device) -> CategoryScorer | None:
    where = f"reward.categories.{name}"
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise FinegrainedError(f"{where}: unknown key(s) {sorted(unknown)} (expected {', '.join(sorted(_ENTRY_KEYS))})")
    weight = float(entry.get("weight", 1.0))
    if weight == 0.0:
        return None
    mode = entry.get("mode") or default_mode
    if mode not in MODES:
        raise FinegrainedError(f"{where}.mode: unknown mode {mode!r} (expected hard, soft or penalty)")
    model, judge_cfg = entry.get("model"), entry.get("judge")
    if bool(model) == bool(judge_cfg):
        raise FinegrainedError(f"{where}: give exactly one of model=<reward model dir> or judge={{_target_: ...}}")
    if model:
        if not (Path(model) / "finegrained.json").is_file():
            raise FinegrainedError(f"{where}.model: {model} is not a reward-model directory (no finegrained.json)")
        from .inference import load_judge

        judge = load_judge(model, device=device)
        norm = judge.normalisation or {"mean": 0.0, "std": 1.0}
        kind, granularity, seg = judge.kind, judge.granularity, judge.segmentation
    else:
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        kind, granularity = entry.get("kind"), entry.get("granularity")
        if kind not in ("span", "preference"):
            raise FinegrainedError(f"{where}.kind: a rule judge needs kind: span or preference")
        if granularity not in GRANULARITIES or (kind == "preference" and granularity != "sequence"):
            raise FinegrainedError(f"{where}.granularity: expected one of {', '.join(GRANULARITIES)} (sequence for preference)")
        try:
            judge = instantiate(judge_cfg)
        except InstantiationException as e:
            raise FinegrainedError(f"{where}.judge: cannot build the judge: {e}") from None
        norm = entry.get("normalisation") or {"mean": 0.0, "std": 1.0}
        seg = segmentation
    std = float(norm.get("std", 1.0))
    if not std > 0:
        raise FinegrainedError(f"{where}: normalisation std must be positive, got {std}")
    return CategoryScorer(name, kind, granularity, weight, mode, judge, seg, float(norm.get("mean", 0.0)), std)


class RewardScorer:
    def __init__(self, categories: Sequence[CategoryScorer]):
        if not categories:
            raise FinegrainedError("reward config has no active category (all weights 0 or none listed)")
        self.categories = list(categories)
        self.last_timings = {"segment": 0.0, "score": 0.0}

    @classmethod
    def from_config(cls, reward_cfg, device=None) -> RewardScorer:
        cfg = _plain(reward_cfg)
        segmentation = parse_segmentation(cfg.get("segmentation"))
        default_mode = cfg.get("span_mode", "hard")
        entries = cfg.get("categories") or {}
        if not isinstance(entries, Mapping):
            raise FinegrainedError("reward.categories must be a mapping of category name -> settings")
        built = [_build_category(n, e or {}, default_mode, segmentation, device) for n, e in entries.items()]
        return cls([c for c in built if c is not None])

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> RewardBreakdown:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        started = time.perf_counter()
        segments = self._segment(completions)
        segmented = time.perf_counter()
        result = RewardBreakdown()
        for c in self.categories:
            if c.kind == "span":
                segs = segments[(c.segmentation, c.granularity)]
                p_error = [list(map(float, p)) for p in c.judge(prompts, completions, segs)]
                if [len(p) for p in p_error] != [len(s) for s in segs]:
                    raise RuntimeError(f"judge of {c.name!r} returned a wrong number of judgements")
                rewards = [c.span_rewards(p) for p in p_error]
                result.categories[c.name] = CategoryRewards(c.name, c.granularity, "span", segs, rewards, p_error=p_error)
            else:
                scores = [float(s) for s in c.judge(prompts, completions)]
                if len(scores) != len(completions):
                    raise RuntimeError(f"judge of {c.name!r} returned {len(scores)} scores for {len(completions)} completions")
                # One reward per completion; a blank completion still gets one, on the span (0, 0).
                segs = [sequence_span(t) or [(0, 0)] for t in completions]
                rewards = [[c.preference_reward(s)] for s in scores]
                result.categories[c.name] = CategoryRewards(c.name, c.granularity, "preference", segs, rewards, raw_scores=scores)
        self.last_timings = {"segment": segmented - started, "score": time.perf_counter() - segmented}
        return result

    def _segment(self, completions: list[str]) -> dict[tuple[SegmentationConfig, str], list]:
        wanted: dict[SegmentationConfig, set[str]] = {}
        for c in self.categories:
            if c.kind == "span":
                wanted.setdefault(c.segmentation, set()).add(c.granularity)
        out = {}
        for seg_cfg, granularities in wanted.items():
            many = get_segmenter(seg_cfg).segment_many(completions, sorted(granularities))
            out.update({(seg_cfg, g): many[g] for g in granularities})
        return out


def has_non_finite(breakdown: RewardBreakdown) -> str | None:
    """The name of the first category with a NaN or infinite reward, or None."""
    for name, c in breakdown.categories.items():
        if any(not math.isfinite(r) for rs in c.rewards for r in rs):
            return name
    return None
