"""The RL learner every algorithm shares (``finegrained ppo``, ``grpo``, ``rloo``), dense rewards,
fine-grained or holistic.

One iteration, as the code below reads:

1. generate  sample ``ppo.samples_per_prompt`` (G) responses per prompt from the policy (KV cache, stop
             at EOS); the batch is prompts x G, a prompt's G samples consecutive and on one process;
2. score     decode with per-token char offsets; every category judges the text (segment, score);
3. place     each segment's reward on the token ending the segment, sequence rewards on EOS -> (B, T, K)
             -> summed into per-token score rewards (B, T);
4. ref/value log-probs under the policy and the frozen reference (and a critic's values, PPO only);
5. advantage the algorithm's estimator (``Learner.estimate``): PPO's GAE over a value model
             (``rl/ppo.py``), or group baselines without one (``rl/critic_free.py``: GRPO, RLOO);
6. update    epochs over minibatches of the algorithm's clipped loss (``Learner.minibatch_loss``);
7. log       trackers (``log.report_to``: tensorboard, mlflow, wandb), progress bar, checkpoints.

A subclass says what its algorithm adds: ``build_critic`` (a value model, or None), ``estimate``
(advantages from a rollout), ``minibatch_loss`` and ``iteration_stats``; everything else is here.

Launching on several devices: ``rl/ppo.py`` (the same for ``grpo`` and ``rloo``).
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..config import log
from ..errors import FinegrainedError
from ..io import atomic_write_json
from ..model_card import policy_card
from ..model_dirs import check_local_source, first_non_finite, module_tensors
from ..progress import Progress
from ..rewards.placement import decode_with_offsets, place_rewards
from ..rewards.scorer import NonFiniteJudgementError, RewardScorer, has_non_finite
from ..trackers import check_installed, report_to_of
from . import functional as F
from .checkpoint import checkpoint_dirs, load_latest_checkpoint, save_checkpoint
from .generation import fit_prompts, prompt_token_budget
from .lora import add_adapters
from .policy import build_policy, frozen_copy
from .replicas import require_identical_replicas
from .rollout import TokenDistribution, joint_inputs, policy_forward, sample_responses
from .runs import clear_interrupted_writes, closing_trackers, make_accelerator, refuse_existing_run, start_logging, write_final_policy
from .types import Trajectory

PHASES = ("generate", "segment", "score", "place", "ref_value_forward", "advantage", "update")
# Test-only: when set, every rank writes its KL and whitening statistics to output_dir/rl_stats/ each
# iteration (the two-process test compares them across ranks and with a one-process computation).
DUMP_STATS_ENV = "FINEGRAINED_DUMP_RL_STATS"


class NonFiniteError(FinegrainedError):
    pass


class PhaseTimer:
    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - started


def load_task_records(cfg: DictConfig) -> list[dict]:
    """The task's checked training prompt records (``finegrained.prompts.load_prompts``)."""
    from ..prompts import load_prompts

    return load_prompts(cfg.task, "train", seed=cfg.seed)


def load_task_prompts(cfg: DictConfig) -> list[str]:
    return [r["prompt"] for r in load_task_records(cfg)]


class Learner:
    """The shared learner; ``algorithm`` names the subclass's algorithm in logs and the model card."""

    algorithm = "rl"

    def __init__(self, cfg: DictConfig):
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.accelerator = make_accelerator(cfg)
        self.is_main = self.accelerator.is_main_process
        check_installed(report_to_of(cfg))  # before any model is built
        if self.is_main:
            clear_interrupted_writes(self.out, self.algorithm, log)
        refuse_existing_run(self.out, cfg.resume, cfg.overwrite, self.algorithm.upper())
        set_seed(cfg.seed)
        records = load_task_records(cfg)
        self.prompts = [r["prompt"] for r in records]
        check_local_source(cfg.policy.name_or_path or "", "policy.name_or_path")
        policy, self.tokenizer = build_policy(cfg, self.out, self.prompts, save_initial=self.is_main)
        if cfg.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        # The critic first: a separate value trunk is a full, trainable copy of the initial policy.
        value = self.build_critic(policy)
        self.prompt_budget = self._fit_prompts(records, policy, value)
        if cfg.lora.r:
            # LoRA: the policy's weights stay frozen; the reference is the policy with its adapters off.
            # (peft makes the input embeddings require grad when gradient checkpointing is on)
            policy = add_adapters(policy, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
            self.reference = None
            trainable, total = policy.get_nb_trainable_parameters()
            n_layers = len(policy.peft_config["default"].target_modules)
            log(f"[{self.algorithm}] LoRA r={cfg.lora.r} (peft) on {n_layers} layers: {trainable:,} of {total:,} policy parameters train")
        else:
            self.reference = frozen_copy(policy).to(self.accelerator.device)
        # Every policy log-prob (rollout and PPO epochs) under the sampling distribution; the reference's
        # at the same temperature, untruncated (finegrained.rl.rollout explains why)
        self.policy_distribution = TokenDistribution.of_sampling(cfg.generation, self.tokenizer.eos_token_id)
        self.reference_distribution = self.policy_distribution.for_reference()
        self.scorer = RewardScorer.from_config(cfg.reward, device=self.accelerator.device)
        self.oracle = self._oracle()
        p = cfg.ppo
        self.group_size = int(p.get("samples_per_prompt", 1))
        groups = [{"params": [q for q in policy.parameters() if q.requires_grad], "lr": p.lr}]
        if value is not None:
            groups.append({"params": [q for q in value.parameters() if q.requires_grad], "lr": p.value_lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        warmup = max(1, p.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        if value is None:
            self.value = None
            self.policy, self.optimizer, self.scheduler = self.accelerator.prepare(policy, optimizer, scheduler)
        else:
            self.policy, self.value, self.optimizer, self.scheduler = self.accelerator.prepare(policy, value, optimizer, scheduler)
        self.kl_ctl = (
            F.AdaptiveKLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon) if cfg.kl.adaptive else F.FixedKLController(cfg.kl.coef)
        )
        # Sums over processes, so that whitening and the KL controller see the whole batch on every rank
        self.sum_across = None if self.accelerator.num_processes == 1 else (lambda t: self.accelerator.reduce(t, reduction="sum"))
        self._dump_stats = bool(os.environ.get(DUMP_STATS_ENV))
        self._stats_record: dict = {}
        self.iteration = 0
        self.data_position = 0
        if cfg.resume:
            self._resume()
        self.trackers = start_logging(cfg, self.out, self.iteration, self.is_main)

    # -- what an algorithm adds ------------------------------------------------------------------------
    def build_critic(self, policy):
        """The value model trained alongside the policy, or None (critic-free algorithms)."""
        return None

    def critic_values(self, ids, mask, position_ids, prompt_length, hidden=None) -> torch.Tensor | None:
        """Values (B, T) before each response token's reward; None without a critic."""
        return None

    @property
    def wants_hidden(self) -> bool:
        """Whether the policy's forward passes must return its last hidden states (a shared value head)."""
        return False

    def estimate(self, traj: Trajectory, decoded, breakdown, timer: PhaseTimer) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, dict]:
        """Step 5: ``(advantages, returns or None, kl, stats)``, tensors (B, T)."""
        raise NotImplementedError

    def minibatch_loss(self, traj: Trajectory, inputs, idx, advantages, returns) -> tuple[torch.Tensor, dict]:
        """The loss of the minibatch ``idx`` (indices into the batch) and its float statistics."""
        raise NotImplementedError

    def iteration_stats(self, traj: Trajectory, returns) -> dict:
        """The algorithm's own scalars of the iteration (beyond losses and rewards)."""
        return {}

    def rename_update_stats(self, stats: dict) -> dict:
        """The update's mean minibatch statistics as logged."""
        return stats

    # -- set-up helpers ------------------------------------------------------------------------------
    def _fit_prompts(self, records: list[dict], policy, value) -> int | None:
        """Prompt tokens that leave room for max_new_tokens in the policy and a separate value trunk;
        too-long prompts are cut (from the left or the right) or refused, by ``task.truncate``."""
        models = [policy] if value is None or self.cfg.value.shared else [policy, getattr(value, "trunk", value)]
        budget = prompt_token_budget(models, self.cfg.generation.max_new_tokens)
        rule = self.cfg.task.get("truncate") or "left"
        source = f"task={self.cfg.task.get('name') or '?'} (train)"
        fit_prompts(self.tokenizer, records, budget, rule, who=self.algorithm, source=source, quiet=not self.is_main)
        return budget

    def _oracle(self):
        oracle_cfg = self.cfg.task.get("oracle")
        if not oracle_cfg:
            return None
        from hydra.utils import instantiate

        return instantiate(oracle_cfg)

    def _resume(self) -> None:
        loaded = load_latest_checkpoint(
            self.out, self.accelerator.unwrap_model(self.policy), self._unwrapped_value(),
            self.optimizer, self.scheduler, log,
        )  # fmt: skip
        if loaded is None:
            log(f"[{self.algorithm}] resume=true but {self.out} has no complete checkpoint: starting from iteration 0")
            return
        state, directory = loaded
        self.iteration = state["iteration"]
        self.data_position = state["data_position"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        log(f"[{self.algorithm}] resumed from {directory} (iteration {self.iteration})")

    def _unwrapped_value(self):
        return None if self.value is None else self.accelerator.unwrap_model(self.value)

    # -- data ------------------------------------------------------------------------------------------
    def next_prompts(self) -> list[str]:
        """This rank's share of the next batch, each prompt repeated ``samples_per_prompt`` times in a row
        (its group, on this rank). The order is a fixed shuffle per pass over the prompts, so the data
        position alone determines the batch (exact resume)."""
        batch = []
        n = len(self.prompts)
        for i in range(self.data_position, self.data_position + self.cfg.ppo.batch_size):
            epoch, index = divmod(i, n)
            order = list(range(n))
            random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
            batch.append(self.prompts[order[index]])
        self.data_position += self.cfg.ppo.batch_size
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        return [prompt for prompt in batch[rank::world] for _ in range(self.group_size)]

    # -- one iteration --------------------------------------------------------------------------------
    def reference_logprobs(self, ids, mask, position_ids, prompt_length: int, response_ids) -> torch.Tensor:
        """Log-probs (B, T) of the response tokens under the frozen reference policy (same temperature as
        sampling, no top-k / top-p truncation)."""
        dist = self.reference_distribution
        if self.reference is not None:
            return policy_forward(self.reference, ids, mask, position_ids, prompt_length, response_ids, distribution=dist)[0]
        with self.accelerator.unwrap_model(self.policy).disable_adapter():  # LoRA: the reference is adapters-off
            return policy_forward(self.policy, ids, mask, position_ids, prompt_length, response_ids, distribution=dist)[0]

    def _checkpoint_note(self, weights_failed: bool = False) -> str:
        """What a stopped run leaves to resume from, truthfully. ``weights_failed``: the current weights (those
        of iteration ``self.iteration``) are themselves broken, so a checkpoint of that iteration is no good."""
        found = checkpoint_dirs(self.out)
        if weights_failed and found and found[-1][0] == self.iteration:
            older = f"; an older one: {found[-2][1]}" if len(found) > 1 else ""
            return (f"the newest checkpoint, {found[-1][1]}, holds these weights, so resuming from it fails the same "
                    f"way{older}; or start over with a lower ppo.lr")
        if not found:
            return "no checkpoint was written yet, so there is nothing to resume from"
        return f"the last good checkpoint, {found[-1][1]}, is kept: resume=true continues from it"

    def _stop(self, phase: str, problem: str, weights_failed: bool = False) -> NonFiniteError:
        note = self._checkpoint_note(weights_failed)
        return NonFiniteError(f"iteration {self.iteration + 1}, phase {phase}: {problem}; stopping ({note})")

    def _check_finite(self, what: str, phase: str, tensor: torch.Tensor) -> None:
        if not torch.isfinite(tensor).all():
            raise self._stop(phase, f"{what} is NaN or infinite")

    def _check_weights_after_update(self, ids=None, mask=None, position_ids=None) -> None:
        """Diverged weights stop the run here, before a checkpoint could hold them: non-finite weights, or
        (finite but huge) weights whose logits on one sequence of the batch ``ids`` (1, L) are not finite."""
        for what, model in (("the policy", self.policy), ("the value model", self.value)):
            if model is None:
                continue
            bad = first_non_finite(module_tensors(self.accelerator.unwrap_model(model)))
            if bad is not None:
                raise self._stop("update", f"after the update {what} has NaN or infinite weights (first: {bad!r})")
        if ids is not None:
            with torch.no_grad(), self.accelerator.autocast():
                logits = self.policy(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids).logits
            if not torch.isfinite(logits).all():
                raise self._stop("update", "after the update the policy gives NaN or infinite logits (its weights diverged)")

    def rollout(self, prompts: list[str], timer: PhaseTimer) -> tuple[Trajectory, dict, list[str], object]:
        cfg, device = self.cfg, self.accelerator.device
        # 1. generate
        with timer("generate"):
            policy = self.accelerator.unwrap_model(self.policy)
            policy.eval()
            try:
                with self.accelerator.autocast():
                    query_ids, query_mask, response_ids, response_mask = sample_responses(
                        policy, self.tokenizer, prompts, max_new_tokens=cfg.generation.max_new_tokens,
                        temperature=cfg.generation.temperature, top_k=cfg.generation.top_k, top_p=cfg.generation.top_p,
                        min_new_tokens=cfg.generation.min_new_tokens, max_prompt_tokens=self.prompt_budget,
                        truncate=cfg.task.get("truncate") or "left",
                    )  # fmt: skip
            except RuntimeError as e:
                # torch.multinomial on the probabilities of diverged weights (finite, but inf/NaN logits)
                if "probability tensor" not in str(e):
                    raise
                problem = "sampling failed: the policy gives NaN or infinite probabilities (its weights diverged)"
                raise self._stop("generate", problem, weights_failed=True) from None
            policy.train()
        # 2. score: decode with offsets, every category judges the text
        decoded = decode_with_offsets(self.tokenizer, [ids[m].tolist() for ids, m in zip(response_ids, response_mask)])
        texts = [d.text for d in decoded]
        try:
            breakdown = self.scorer(prompts, texts)
        except NonFiniteJudgementError as e:
            raise self._stop("score", str(e)) from None
        timer.seconds["segment"] += self.scorer.last_timings["segment"]
        timer.seconds["score"] += self.scorer.last_timings["score"]
        bad = has_non_finite(breakdown)
        if bad:
            raise self._stop("score", f"category {bad!r} gave a NaN or infinite reward")
        # 3. place each segment's reward on its last token -> (B, T, K) -> (B, T)
        with timer("place"):
            category_rewards = place_rewards(breakdown, decoded, response_mask.cpu()).to(device)  # (B, T, K)
            score_rewards = F.combine_rewards(category_rewards)  # (B, T); weights applied by the scorer
        # 4. log-probs of the sampling policy and the reference, values
        with timer("ref_value_forward"), torch.no_grad(), self.accelerator.autocast():
            ids, mask, position_ids = joint_inputs(query_ids, query_mask, response_ids, response_mask)
            P = query_ids.shape[1]
            logprobs, _, hidden = policy_forward(
                self.policy, ids, mask, position_ids, P, response_ids, self.wants_hidden, self.policy_distribution
            )
            ref_logprobs = self.reference_logprobs(ids, mask, position_ids, P, response_ids)
            values = self.critic_values(ids, mask, position_ids, P, hidden)
            values = None if values is None else values.float()
        trajectory = Trajectory(
            query_ids=query_ids, query_mask=query_mask, response_ids=response_ids, response_mask=response_mask,
            logprobs=logprobs.float(), ref_logprobs=ref_logprobs.float(), values=values,
            rewards=score_rewards, category_rewards=category_rewards,
        )  # fmt: skip
        return trajectory, {"decoded": decoded}, texts, breakdown

    def update(self, traj: Trajectory, advantages, returns, timer: PhaseTimer) -> dict:
        """Step 6: epochs over shuffled minibatches; one optimizer step per accumulation group, each
        minibatch's loss divided by the number of minibatches in its group (``F.accumulation_groups``)."""
        p = self.cfg.ppo
        B = traj.response_ids.shape[0]
        ids, mask, position_ids = joint_inputs(traj.query_ids, traj.query_mask, traj.response_ids, traj.response_mask)
        inputs = (ids, mask, position_ids, traj.query_ids.shape[1])
        mb = max(1, min(p.minibatch_size, B))
        sums: dict[str, float] = {}
        grad_norms: list[float] = []
        n_minibatches = 0
        with timer("update"):
            self.policy.train()
            for _ in range(p.epochs):
                order = torch.randperm(B, device=ids.device)
                chunks = [order[i : i + mb] for i in range(0, B, mb)]
                for group in F.accumulation_groups(len(chunks), p.grad_accum):
                    for step in group:
                        loss, minibatch_stats = self.minibatch_loss(traj, inputs, chunks[step], advantages, returns)
                        self._check_finite(f"the {self.algorithm.upper()} loss", "update", loss.detach())
                        self.accelerator.backward(loss / len(group))
                        for key, value in minibatch_stats.items():
                            sums[key] = sums.get(key, 0.0) + value
                        n_minibatches += 1
                    params = [q for param_group in self.optimizer.param_groups for q in param_group["params"]]
                    grad_norms.append(float(self.accelerator.clip_grad_norm_(params, p.max_grad_norm)))
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
        self._check_weights_after_update(ids[:1], mask[:1], position_ids[:1])
        stats = {k: v / max(n_minibatches, 1) for k, v in sums.items()}
        stats["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)  # mean over optimizer steps
        return self.rename_update_stats(stats)

    def run_iteration(self) -> dict:
        """One iteration (steps 1-7); returns its statistics, ``time/<phase>`` included."""
        timer = PhaseTimer()
        prompts = self.next_prompts()
        traj, info, texts, breakdown = self.rollout(prompts, timer)
        advantages, returns, kl, estimate_stats = self.estimate(traj, info["decoded"], breakdown, timer)
        stats = self.update(traj, advantages, returns, timer)
        stats.update(estimate_stats)
        mask = traj.response_mask
        # the mean KL per response over every process's responses: each rank moves its controller alike
        sequence_kl = float(F.global_mean((kl * mask).sum(-1), self.sum_across))
        self.kl_ctl.update(sequence_kl, self.cfg.ppo.batch_size * self.group_size)
        self.iteration += 1
        if self._dump_stats:
            self._write_stats(kl, mask, sequence_kl, prompts)
        stats.update({
            "reward/total": float(traj.rewards.sum(-1).mean()),
            "kl": sequence_kl,
            "kl_coef": self.kl_ctl.value,
            "response_length": float(mask.sum(-1).float().mean()),
            **self.iteration_stats(traj, returns),
        })  # fmt: skip
        for k, name in enumerate(breakdown.names):
            category = breakdown.categories[name]
            stats[f"rewards/{name}/mean"] = float(traj.category_rewards[..., k].sum(-1).mean())
            if category.p_error is not None:
                fraction = category.error_fraction()
                if not math.isnan(fraction):
                    stats[f"rewards/{name}/error_fraction"] = fraction
        if self.oracle is not None:
            judged = self.oracle(prompts, texts)
            stats.update({f"oracle/{c}/error_rate": v for c, v in judged["error_rate"].items()})
            stats["oracle/total_error_rate"] = judged["total_error_rate"]
        stats.update({f"time/{phase}": seconds for phase, seconds in timer.seconds.items()})
        self._last = (prompts, texts, breakdown)
        return stats

    # -- test-only statistics (DUMP_STATS_ENV) -----------------------------------------------------------
    def _record_whitening(self, name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Remember what whitening sees (its real entries) and the statistics it uses, when dumping."""
        if not self._dump_stats:
            return
        mean, var = F.global_masked_moments(x, mask, self.sum_across)
        self._stats_record[name] = {"values": x[mask.bool()].tolist(), "mean": float(mean), "var": float(var)}

    def _write_stats(self, kl: torch.Tensor, mask: torch.Tensor, sequence_kl: float, prompts: list[str]) -> None:
        record = {
            "rank": self.accelerator.process_index, "iteration": self.iteration, "kl_coef": self.kl_ctl.value,
            "kl": sequence_kl, "sequence_kl": (kl * mask).sum(-1).tolist(), "prompts": prompts, **self._stats_record,
        }  # fmt: skip
        atomic_write_json(self.out / "rl_stats" / f"iter-{self.iteration}-rank-{self.accelerator.process_index}.json", record)

    # -- outputs ---------------------------------------------------------------------------------------
    def log_stats(self, stats: dict) -> None:
        """The iteration's statistics (and every ``log.samples_every`` iterations a few samples) to every tracker."""
        if not self.trackers.active:
            return
        self.trackers.log(stats, self.iteration)
        every = self.cfg.log.samples_every
        if every and self.iteration % every == 0:
            prompts, texts, breakdown = self._last
            self.trackers.log_text("samples", format_samples(prompts, texts, breakdown, self.cfg.log.n_samples), self.iteration)
        self.trackers.flush()

    def save_checkpoint(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.is_main:
            state = {"data_position": self.data_position, "kl_controller": self.kl_ctl.state_dict()}
            save_checkpoint(
                self.out, self.iteration, self.accelerator.unwrap_model(self.policy), self._unwrapped_value(),
                self.optimizer, self.scheduler, state, keep=self.cfg.checkpoint.keep,
            )  # fmt: skip
        self.accelerator.wait_for_everyone()

    def save_final(self) -> None:
        require_identical_replicas(self.accelerator, self.policy, self.algorithm, log)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            # final/ is a plain HF model: LoRA adapters folded into the weights
            card = policy_card(algorithm=self.algorithm, base_model=self.cfg.policy.name_or_path or "tiny", config=self.cfg,
                               reward=self.cfg.reward, summary=self.run_summary())  # fmt: skip
            write_final_policy(self.out, self.accelerator.unwrap_model(self.policy), self.tokenizer, bool(self.cfg.lora.r), card)
        self.accelerator.wait_for_everyone()

    def run_summary(self) -> dict:
        """For the model card: iterations done and the last batch's mean score reward (no KL), when one ran."""
        scores = self._last[2].total_per_sample() if getattr(self, "_last", None) else []
        return {"iterations": self.iteration, "last_mean_score_reward": sum(scores) / len(scores) if scores else None}

    def train(self) -> dict:
        """Iterations up to ``ppo.iterations``, checkpoints, final/; the trackers are closed however it ends."""
        return closing_trackers(self.trackers, self._train)

    def _train(self) -> dict:
        cfg = self.cfg
        total = cfg.ppo.iterations
        if self.is_main:
            log(f"[{self.algorithm}] iterations {self.iteration + 1}..{total}, {cfg.ppo.batch_size * self.group_size} episodes each, categories: {', '.join(self.scorer.names)}")
        bar = Progress(total, self.algorithm, unit="iterations", initial=self.iteration, bar=bool(cfg.log.progress), enabled=self.is_main)
        stats: dict = {}
        while self.iteration < total:
            stats = self.run_iteration()
            self.log_stats(stats)
            bar.update(1, reward=stats["reward/total"], kl=stats["kl"])
            if cfg.checkpoint.every and self.iteration % cfg.checkpoint.every == 0:
                self.save_checkpoint()
        bar.close()
        self.save_final()
        return stats


def format_samples(prompts, texts, breakdown, n: int) -> str:
    """Markdown: a few completions with every segment's reward marked after it, per category."""
    parts = []
    for i in range(min(n, len(texts))):
        lines = [f"**prompt:** {prompts[i]}", ""]
        for name, c in breakdown.categories.items():
            marked, last = [], 0
            for (s, e), r in zip(c.segments[i], c.rewards[i]):
                marked.append(texts[i][last:e] + f" **[{r:+.2f}]**")
                last = e
            marked.append(texts[i][last:])
            lines.append(f"*{name}:* " + "".join(marked))
        parts.append("\n\n".join(lines))
    return "\n\n---\n\n".join(parts)
