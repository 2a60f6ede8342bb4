"""The GPT Xiangqi player of "当GPT遇上中国象棋" and the experiment that trains it on scripted games.

Move scoring (Su's `predict`): append each legal move m = (c₁c₂c₃c₄) to the game's tokens h and play

    argmax_m Σ_{i=1..4} log max(p(c_i | h, c_<i), 1e-8)

The history runs once into a KV cache (right-padded to a fixed length, so one compile serves every ply),
the cache is tiled over the ≤ 111 legal moves (padded to `MAX_MOVES` = 128) and the 4 characters of all
moves run as one chunk. Only legal moves are scored, so play is always legal.

The experiment (spec §5.6): a corpus of material-greedy self-play games, a small GPT trained with the
article's progressive-length curriculum (maxlen = L // n, n = 8, 4, 2, 1, switching at 20k, 40k, 80k
batches in the script; here at the same fractions 1/8, 1/4, 1/2 of the run), then
(a) the legal-move rate of unconstrained greedy 4-token generation on held-out positions (first 30
plies), (b) the move-scoring player's top-1 agreement with the scripted policy vs a random legal move,
(c) per-token validation perplexity, and games of the player against the scripted policies.

Training is data-parallel (`train`; the UniLM runner uses the same step): `config.mesh` builds a mesh
(kexue_jax.core.sharding), parameters and Adam state are replicated, every batch is split over the batch
axes, and the step is one `jax.jit` with in/out shardings; 8 simulated devices give the losses of one
(tests/attention/test_runners_multidevice.py).

References:
  https://kexue.fm/archives/7877; bert4keras examples/task_language_model_chinese_chess.py.
"""
from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from kexue_jax.attention import decoding
from kexue_jax.attention.gpt import GPT, tile_cache
from kexue_jax.core import sharding
from kexue_jax.core.config import check_int, require
from kexue_jax.core.metrics import write_results
from kexue_jax.data import xiangqi as xq

__all__ = ["MAX_MOVES", "move_ids", "score_moves", "choose_moves", "greedy_next_moves", "curriculum_maxlen",
           "lm_loss", "data_parallel_train_step", "check_batch_mesh", "learning_rate_schedule", "encode_games", "train", "play_vs_policy",
           "check_training_config", "check_config", "run"]

MAX_MOVES = 128  # ≥ 111, Su's bound on the number of legal moves
LOG_FLOOR = 1e-8
SCORE_ROWS = 8  # positions per scoring call (batches are padded to a multiple: one compile)
GREEDY_ROWS = 64


def move_ids(moves: list[str]) -> np.ndarray:
    """ICCS moves -> [M, 4] token ids."""
    if not moves:
        raise ValueError("`moves` must be a non-empty list of ICCS moves; got []")
    return np.stack([xq.encode(m)[1:] for m in moves]).astype(np.int32)


@nnx.jit
def _score_batch(model: GPT, hist: jax.Array, valid: jax.Array, moves: jax.Array) -> jax.Array:
    """hist, valid [P, L]; moves [P, M, 4] -> scores [P, M]."""
    p, length = hist.shape
    m = moves.shape[1]
    cache = model.init_cache(p, length + 4)
    logits, cache = model.step(cache, hist, valid=valid)  # [P, L, V]
    last = jnp.sum(valid, axis=1) - 1  # [P]
    first = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]  # [P, V]
    cache = tile_cache(cache, m)  # [P·M, ...]
    chunk, _ = model.step(cache, moves.reshape(p * m, 4))  # [P·M, 4, V]
    chunk = chunk.reshape(p, m, 4, -1)
    logp = lambda x: jnp.log(jnp.maximum(jax.nn.softmax(x, axis=-1), LOG_FLOOR))
    lp1 = jnp.take_along_axis(logp(first)[:, None, :], moves[:, :, :1], axis=2)[..., 0]  # [P, M]
    rest = jnp.take_along_axis(logp(chunk[:, :, :3]), moves[:, :, 1:, None], axis=3)[..., 0]  # [P, M, 3]
    return lp1 + jnp.sum(rest, axis=-1)


def _pad_histories(histories: list[list[str]], context: int, rows: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """[rows, context] ids and validity; extra rows (padding the batch to a fixed size, so that one
    compile serves every call) hold just the start token."""
    rows = len(histories) if rows is None else max(rows, len(histories))
    hist = np.zeros((rows, context), np.int32)
    valid = np.zeros((rows, context), bool)
    valid[:, 0] = True
    for i, h in enumerate(histories):
        ids = xq.encode(h)
        if len(ids) > context:
            raise ValueError(f"`histories` must have at most {(context - 1) // 4} moves (context {context}); "
                             f"got {len(h)}")
        hist[i, :len(ids)], valid[i, :len(ids)] = ids, True
    return hist, valid


def score_moves(model: GPT, histories: list[list[str]], candidates: list[list[str]], *, context: int
                ) -> list[np.ndarray]:
    """Σ of the 4 floored log-probabilities of each candidate move after each history.

    Args:
      model: a GPT over the 20-token ICCS vocabulary.
      histories: P games so far (lists of ICCS moves).
      candidates: P lists of ≤ MAX_MOVES ICCS moves.
      context: the fixed padded history length (tokens), ≥ 4·len(history) + 1.

    Returns:
      P arrays of scores, one per candidate.
    """
    if len(histories) != len(candidates):
        raise ValueError(f"`candidates` must have one list per history ({len(histories)}); got {len(candidates)}")
    # One position (a game move) runs alone: padding it to SCORE_ROWS would multiply the cost by 8.
    rows = 1 if len(histories) == 1 else -(-len(histories) // SCORE_ROWS) * SCORE_ROWS
    hist, valid = _pad_histories(histories, context, rows)
    moves = np.zeros((rows, MAX_MOVES, 4), np.int32)
    for i, c in enumerate(candidates):
        if not 1 <= len(c) <= MAX_MOVES:
            raise ValueError(f"`candidates[{i}]` must hold 1..{MAX_MOVES} moves; got {len(c)}")
        moves[i, :len(c)] = move_ids(c)
    scores = np.asarray(_score_batch(model, jnp.asarray(hist), jnp.asarray(valid), jnp.asarray(moves)))
    return [scores[i, :len(c)] for i, c in enumerate(candidates)]


def choose_moves(model: GPT, histories: list[list[str]], *, context: int) -> list[str | None]:
    """The move-scoring player: argmax over the legal moves of each position (None if there is none)."""
    legal = []
    for h in histories:
        pos = xq.initial_position()
        for mv in h:
            pos = xq.make_move(pos, xq.parse_move(pos, mv))
        legal.append([xq.move_to_iccs(m) for m in xq.legal_moves(pos)])
    idx = [i for i, lm in enumerate(legal) if lm]
    out: list[str | None] = [None] * len(histories)
    if idx:
        scores = score_moves(model, [histories[i] for i in idx], [legal[i] for i in idx], context=context)
        for i, s in zip(idx, scores):
            out[i] = legal[i][int(np.argmax(s))]
    return out


@nnx.jit
def _greedy4(model: GPT, hist: jax.Array, valid: jax.Array) -> jax.Array:
    p, length = hist.shape
    cache = model.init_cache(p, length + 4)
    logits, cache = model.step(cache, hist, valid=valid)
    last = jnp.sum(valid, axis=1) - 1
    first = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
    toks, _ = decoding.greedy_decode(decoding.gpt_step_fn(model), cache, first, max_len=4)
    return toks  # [P, 4]


def greedy_next_moves(model: GPT, histories: list[list[str]], *, context: int) -> list[str]:
    """Unconstrained greedy generation of the next 4 characters after each history (may be malformed:
    then the returned string holds '?' where a [PAD] was generated)."""
    rows = -(-len(histories) // GREEDY_ROWS) * GREEDY_ROWS
    hist, valid = _pad_histories(histories, context, rows)
    toks = np.asarray(_greedy4(model, jnp.asarray(hist), jnp.asarray(valid)))[:len(histories)]
    return ["".join(xq.VOCAB[t] if t else "?" for t in row) for row in toks]


def curriculum_maxlen(step: int, *, max_len: int, boundaries: tuple[int, int, int]) -> int:
    """Su's progressive length: max_len // n with n = 8 before boundaries[0], 4 before [1], 2 before [2],
    then 1 (the script: max_len 512, boundaries 20k, 40k, 80k batches)."""
    if not (len(boundaries) == 3 and 0 <= boundaries[0] <= boundaries[1] <= boundaries[2]):
        raise ValueError(f"`boundaries` must be 3 non-decreasing step counts; got {boundaries!r}")
    n = 8 if step < boundaries[0] else 4 if step < boundaries[1] else 2 if step < boundaries[2] else 1
    return max(max_len // n, 2)


def lm_loss(model: GPT, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Next-token cross-entropy over real positions: (mean loss, number of predicted tokens)."""
    logits = model(tokens[:, :-1])  # [b, t-1, V]
    mask = jnp.arange(1, tokens.shape[1])[None, :] < lengths[:, None]  # [b, t-1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    count = jnp.sum(mask)
    return jnp.sum(jnp.where(mask, ce, 0)) / jnp.maximum(count, 1), count


def data_parallel_train_step(graphdef, tx: optax.GradientTransformation, loss_fn, mesh, num_batch_args: int):
    """`sharding.data_parallel_step` for an NNX model: loss_fn(model, *batch) -> (loss, aux) on the model
    merged from `graphdef` and the pure parameter pytree."""
    return sharding.data_parallel_step(lambda p, *batch: loss_fn(nnx.merge(graphdef, p), *batch), tx, mesh,
                                       num_batch_args)


LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(config):
    """Adam's learning rate from `config.learning_rate`, `config.lr_schedule` (default 'constant') and
    `config.warmup_steps` (default: 0 for 'constant', 2% of `num_steps` for 'cosine'). 'constant' warms up
    linearly over `warmup_steps` (if any) and then stays at the peak; 'cosine' warms up linearly, then
    decays by a half cosine to 10% of the peak at `num_steps` (ours; the articles' scripts use a constant
    rate). Shared by the chess and UniLM runners; checked before compiling."""
    kind = config.get("lr_schedule", "constant")
    if kind not in LR_SCHEDULES:
        raise ValueError(f"`lr_schedule` must be one of {LR_SCHEDULES}; got {kind!r}")
    lr = config.learning_rate
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"`learning_rate` must be a finite number > 0; got {lr!r}")
    warmup = config.get("warmup_steps")
    if warmup is None:
        warmup = 0 if kind == "constant" else int(0.02 * config.num_steps)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"`warmup_steps` must be an int >= 0; got {warmup!r}")
    lr = float(lr)
    if kind == "constant":
        return lr if not warmup else optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    warmup = max(1, warmup)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(warmup + 1, int(config.num_steps)),
                                              end_value=0.1 * lr)


def check_batch_mesh(config) -> dict:
    """`sharding.check_batch_size` on `config.batch_size` and `config.mesh` (before any compilation)."""
    return sharding.check_batch_size(config.batch_size, config.get("mesh"))


def checkpoint_every(config) -> int:
    """`config.checkpoint_every` checked (an int >= 1; 0 or absent: only at the end, i.e. `num_steps`)."""
    every = config.get("checkpoint_every") or int(config.num_steps)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"`checkpoint_every` must be an int >= 1 (0 or None: only at the end); got {every!r}")
    return every


def check_training_config(config) -> None:
    """The keys shared by the chess and UniLM runners, checked in plain Python before anything is generated
    or traced (a ValueError naming the key): the batch and mesh, `seed`, `num_steps`, `log_every`,
    `checkpoint_every`, the learning-rate schedule and the GPT sizes (`num_heads` must divide `d_model`
    into an even head dim: the GPT applies RoPE to q and k)."""
    check_batch_mesh(config)
    check_int(config.seed, "seed", minimum=0)
    check_int(config.num_steps, "num_steps")
    check_int(config.log_every, "log_every")
    checkpoint_every(config)
    learning_rate_schedule(config)
    for key in ("d_model", "num_heads", "num_layers", "ffn_dim"):
        check_int(config[key], key)
    d, h = config.d_model, config.num_heads
    require(d % h == 0 and (d // h) % 2 == 0, "num_heads",
            f"a divisor of d_model={d} giving an even head dim (RoPE rotates pairs of dims)", h)


def check_config(config) -> None:
    """Every key `run` reads, checked before the corpus is generated or anything is traced (a ValueError
    naming the key). `num_games` must be at least `batch_size`: the training batches are drawn without
    replacement from the `num_games` training games, so fewer games than one batch would never yield one."""
    check_training_config(config)
    for key in ("num_eval_games", "max_plies", "eval_plies", "num_agreement_positions", "games_per_side",
                "game_plies"):
        check_int(config[key], key)
    require(isinstance(config.num_games, int) and not isinstance(config.num_games, bool)
            and config.num_games >= config.batch_size, "num_games",
            f"an integer >= batch_size ({config.batch_size}: one batch of distinct training games)", config.num_games)


def _replay(moves: list[str]) -> list[xq.Position]:
    pos = xq.initial_position()
    out = [pos]
    for mv in moves:
        pos = xq.make_move(pos, xq.iccs_to_move(mv))
        out.append(pos)
    return out


def play_vs_policy(model: GPT, policy: str, *, model_side: int, rng: np.random.Generator, max_plies: int,
                   context: int) -> tuple[float, list[str]]:
    """One game of the move-scoring player against a scripted policy; returns (score for the model: 1 win,
    0.5 draw at max_plies, 0 loss, ILLEGAL never happens by construction; the moves)."""
    pos, moves = xq.initial_position(), []
    for _ in range(max_plies):
        legal = xq.legal_moves(pos)
        if not legal:
            return (0.0 if pos.side == model_side else 1.0), moves
        if pos.side == model_side:
            iccs = choose_moves(model, [moves], context=context)[0]
            mv = xq.parse_move(pos, iccs)
        else:
            mv = xq.policy_move(pos, policy, rng, legal)
        moves.append(xq.move_to_iccs(mv))
        pos = xq.make_move(pos, mv)
    return 0.5, moves


def _batches(tokens, lengths, batch_size, rng):
    n = len(tokens)
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            j = perm[i:i + batch_size]
            yield tokens[j], lengths[j]


def encode_games(games: list[list[str]], max_plies: int) -> tuple[np.ndarray, np.ndarray]:
    """Games -> right-padded token ids [n, 4·max_plies + 1] and lengths [n] (4·plies + 1)."""
    max_tokens = 4 * max_plies + 1
    return (np.stack([np.pad(xq.encode(g), (0, max_tokens - 4 * len(g) - 1)) for g in games]),
            np.array([4 * len(g) + 1 for g in games], np.int32))


def resumable_loop(config, params, opt_state, train_step, make_batch, *, rep, bsh, workdir: str | None = None,
                   writer=None) -> tuple:
    """The training loop of the chess and UniLM runners, checkpointed and resumable.

    `make_batch(step) -> (host batch dict, extra metrics)` draws step `step`'s batch (consuming the caller's
    rng); `train_step(params, opt_state, *the batch's arrays in the dict's order) -> (params, opt_state,
    loss)`. With `workdir`, (params, opt_state, the per-step losses so far) are saved atomically to
    `workdir/checkpoints` every `config.checkpoint_every` steps and at the end; a later call on the same
    workdir restores the latest one and replays `make_batch` up to it, so the resumed run (and the rng
    after it) is bit-identical to an uninterrupted one. The losses are checked at every checkpoint (and
    every 16 steps): a NaN or infinite loss raises `NonFiniteError` naming the step, before anything is
    saved, so the last good checkpoint is kept (parameters that an update made non-finite, with a finite
    loss, are refused the same way before each save). `writer` defaults to `workdir/metrics.jsonl`.
    Returns (params, per-step losses)."""
    from kexue_jax.core import checkpoint as ckpt_lib
    from kexue_jax.core import metrics as metrics_lib
    from kexue_jax.core.train import NonFiniteError, _check_params_finite, _restore_matching

    def check_finite(fetched):
        bad = [i for i, v in sorted(fetched.items()) if not np.isfinite(v)]
        if bad:
            raise NonFiniteError(
                f"metric 'train/loss' became {float(fetched[bad[0]])} at step {bad[0]}; training stopped and "
                "the last good checkpoint was kept (lower `learning_rate` or check the data)")

    num_steps, ckpt_every = int(config.num_steps), checkpoint_every(config)
    history = np.zeros(num_steps, np.float32)  # per-step losses, checkpointed with the state
    start, checkpointer, losses = 0, None, {}
    if workdir is not None:
        checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
    try:
        latest = checkpointer.latest_step() if checkpointer is not None else None
        if latest is not None:
            state = dict(params=params, opt_state=opt_state, losses=jax.device_put(history, rep))
            state = _restore_matching(checkpointer, ckpt_lib.abstract_like(state), latest, workdir)
            params, opt_state = state["params"], state["opt_state"]
            history = np.array(jax.device_get(state["losses"]))
            start = int(latest)
            for step in range(start):  # replay the batch stream (and the rng) to where the run stopped
                make_batch(step)
            print(f"[kexue_jax] resumed from step {start} in {workdir}", flush=True)
        if writer is None and workdir is not None:
            writer = metrics_lib.MetricWriter(workdir, resume_step=start - 1)
        for step in range(start, num_steps):
            host, extra = make_batch(step)
            batch = sharding.put_batch(host, bsh)
            params, opt_state, loss = train_step(params, opt_state, *(batch[k] for k in host))
            losses[step] = loss
            done = step + 1
            if (step % config.log_every == 0 or done == num_steps) and writer is not None:
                writer.write(step, {"train/loss": float(loss), **extra})
            if step % 16 == 0 or done % ckpt_every == 0 or done == num_steps:
                # a host sync (simulated CPU devices deadlock without one every ≤ 16 steps) and the NaN guard
                fetched = jax.device_get(losses)
                check_finite(fetched)
                for i, v in fetched.items():
                    history[i] = v
                losses = {}
            if checkpointer is not None and (done % ckpt_every == 0 or done == num_steps):
                _check_params_finite(params, done)
                checkpointer.save(done, dict(params=params, opt_state=opt_state,
                                             losses=jax.device_put(history, rep)))
    finally:
        if checkpointer is not None:
            checkpointer.close()
    return params, history


def train(config, tokens: np.ndarray, lengths: np.ndarray, *, rng: np.random.Generator, writer=None,
          workdir: str | None = None) -> tuple[GPT, np.ndarray]:
    """Data-parallel Adam training with the progressive-length curriculum; returns (model, per-step losses).

    The mesh comes from `config.mesh`; each batch [batch_size, maxlen] is split over its batch axes.
    With `workdir`, training checkpoints there every `config.checkpoint_every` steps and resumes from the
    latest checkpoint bit-identically (`resumable_loop`)."""
    c = config
    check_batch_mesh(c)
    model = GPT(len(xq.VOCAB), c.d_model, c.num_heads, c.num_layers, c.ffn_dim, rngs=nnx.Rngs(c.seed))
    mesh = sharding.make_mesh(c.get("mesh"))
    rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    tx = optax.adam(learning_rate_schedule(c))
    graphdef, params = nnx.split(model, nnx.Param)  # a GPT holds only nnx.Param variables
    params = jax.device_put(params, rep)
    opt_state = jax.device_put(tx.init(params), rep)
    train_step = data_parallel_train_step(graphdef, tx, lm_loss, mesh, 2)

    boundaries = tuple(int(c.num_steps * f) for f in (1 / 8, 1 / 4, 1 / 2))
    batches = _batches(tokens, lengths, c.batch_size, rng)

    def make_batch(step):
        maxlen = curriculum_maxlen(step, max_len=tokens.shape[1], boundaries=boundaries)
        tok, ln = next(batches)
        return dict(tokens=tok[:, :maxlen], lengths=np.minimum(ln, maxlen)), {"train/maxlen": maxlen}

    params, losses = resumable_loop(c, params, opt_state, train_step, make_batch, rep=rep, bsh=bsh,
                                    workdir=workdir, writer=writer)
    return nnx.merge(graphdef, jax.device_get(params)), losses


def run(config, workdir: str) -> dict:
    """Corpus -> curriculum training -> metrics (a), (b), (c) and games; writes results.json.

    Training checkpoints into `workdir` (`config.checkpoint_every`) and resumes from it when run again."""
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    c = config
    rng = np.random.default_rng(c.seed)
    games = xq.generate_games(c.num_games + c.num_eval_games, policy="greedy", seed=c.seed, max_plies=c.max_plies)
    train_games, eval_games = games[:c.num_games], games[c.num_games:]
    max_tokens = 4 * c.max_plies + 1
    tr_tok, tr_len = encode_games(train_games, c.max_plies)
    ev_tok, ev_len = encode_games(eval_games, c.max_plies)
    corpus_s = time.time() - t0

    t1 = time.time()
    model, losses = train(c, tr_tok, tr_len, rng=rng, workdir=workdir)
    loss = float(losses[-1])
    train_s = time.time() - t1

    # (c) validation perplexity (per predicted token, full games)
    eval_loss = nnx.jit(lm_loss)
    tot, cnt = 0.0, 0
    pad = (-len(ev_tok)) % 64  # fixed batch of 64: zero-length rows predict nothing
    ev_tok, ev_len = np.concatenate([ev_tok, np.zeros((pad, max_tokens), np.int32)]), np.concatenate(
        [ev_len, np.zeros(pad, np.int32)])
    for i in range(0, len(ev_tok), 64):
        l, n = eval_loss(model, jnp.asarray(ev_tok[i:i + 64]), jnp.asarray(ev_len[i:i + 64]))
        tot, cnt = tot + float(l) * int(n), cnt + int(n)
    val_ppl = float(np.exp(tot / max(cnt, 1)))

    # held-out positions in the first `eval_plies` plies
    context = 4 * c.eval_plies + 1  # one padded length for every evaluation call (histories < eval_plies)
    game_context = 4 * c.game_plies + 1
    positions = []  # (history, position)
    for g in eval_games:
        replay = _replay(g)
        for ply in range(min(c.eval_plies, len(g))):
            positions.append((g[:ply], replay[ply], g[ply]))
    # (a) unconstrained greedy generation: well-formed, pseudo-legal, legal
    gen = []
    for i in range(0, len(positions), 4 * GREEDY_ROWS):
        gen += greedy_next_moves(model, [p[0] for p in positions[i:i + 4 * GREEDY_ROWS]], context=context)
    formed = pseudo = legal = 0
    for (_, pos, _), mv in zip(positions, gen):
        try:
            move = xq.iccs_to_move(mv)
        except ValueError:
            continue
        formed += 1
        pseudo += move in xq.pseudo_legal_moves(pos)
        legal += move in xq.legal_moves(pos)
    n_pos = max(len(positions), 1)
    # (b) top-1 agreement of the move-scoring player with the greedy policy's choice set
    sub = [positions[i] for i in rng.permutation(len(positions))[:c.num_agreement_positions]]
    chosen = []
    for i in range(0, len(sub), SCORE_ROWS):
        chosen += choose_moves(model, [p[0] for p in sub[i:i + SCORE_ROWS]], context=context)
    agree = agree_played = base = base_played = 0.0
    cap_n = cap_agree = cap_base = 0.0
    for (hist, pos, played), mv in zip(sub, chosen):
        legal_m = xq.legal_moves(pos)
        choices = xq.greedy_choices(pos, legal_m)
        hit = xq.iccs_to_move(mv) in choices
        agree += hit
        agree_played += mv == played
        base += len(choices) / len(legal_m)
        base_played += 1 / len(legal_m)
        if len(choices) < len(legal_m):  # a capture is available: the policy is (nearly) deterministic
            cap_n += 1
            cap_agree += hit
            cap_base += len(choices) / len(legal_m)
    n_sub = max(len(sub), 1)
    # games against the scripted policies
    results = {}
    for policy in ("random", "greedy"):
        w = d = l_ = 0
        for g in range(c.games_per_side):
            for side in (1, -1):
                score, _ = play_vs_policy(model, policy, model_side=side, rng=rng, max_plies=c.game_plies,
                                          context=game_context)
                w, d, l_ = w + (score == 1.0), d + (score == 0.5), l_ + (score == 0.0)
        results.update({f"games/vs_{policy}/wins": float(w), f"games/vs_{policy}/draws": float(d),
                        f"games/vs_{policy}/losses": float(l_)})
    results.update({
        "train/final_loss": float(loss),
        "eval/val_perplexity": val_ppl,
        "eval/greedy_wellformed_rate": formed / n_pos,
        "eval/greedy_pseudo_legal_rate": pseudo / n_pos,
        "eval/greedy_legal_rate": legal / n_pos,
        "eval/top1_agreement": agree / n_sub,
        "eval/top1_agreement_random_baseline": base / n_sub,
        "eval/top1_same_as_played": agree_played / n_sub,
        "eval/top1_same_as_played_random_baseline": base_played / n_sub,
        "eval/capture_positions": cap_n,
        "eval/capture_agreement": cap_agree / max(cap_n, 1),
        "eval/capture_agreement_random_baseline": cap_base / max(cap_n, 1),
        "eval/num_positions": float(len(positions)),
        "time/corpus_s": corpus_s, "time/train_s": train_s, "time/total_s": time.time() - t0,
    })
    return write_results(workdir, results)
