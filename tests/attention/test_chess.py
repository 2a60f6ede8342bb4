"""Xiangqi: the legal-move generator equals the cchess oracle (pseudo-legal moves filtered by
`is_checked_move`) on ~1500 positions from seeded games incl. checks, flying-general restrictions and
checkmates; tokenizer round trip and 4n + 1 tokens; the move-scoring player's batched cached scores equal
a full-forward sum of floored log-softmax (1e-5) and its moves are legal (200 plies, oracle-checked);
the curriculum schedule; bad inputs.

cchess (LGPL, PyPI 1.25.5) is a test-time oracle only (requirements-test.txt; `make test` installs it);
the library never imports it.
"""

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from kexue_jax.attention import chess
from kexue_jax.attention.gpt import GPT
from kexue_jax.data import xiangqi as xq



@pytest.fixture(scope="module")
def cchess():
    return pytest.importorskip("cchess")


def _oracle_moves(cchess, fen, *, check_api=False):
    """cchess's legal moves: its valid moves whose making leaves the mover not in check.

    `ChessBoard.is_checked_move` deep-copies the whole board for every move (~45% of this file's run
    time); the same cchess calls on the board itself (`_move_piece`, the side flip, `is_checking`), then
    undone, give its answer without the copy. `check_api` also asks `is_checked_move` itself and asserts
    that both agree."""
    board = cchess.ChessBoard(fen)
    out = set()
    for f, t in board.create_moves():
        if not board.is_valid_move(f, t):
            continue
        captured = board._board[t[1]][t[0]]
        board._move_piece(f, t)
        board.move_player.next()
        checked = board.is_checking()
        board.move_player.next()
        board._move_piece(t, f)
        board._board[t[1]][t[0]] = captured
        if check_api:
            assert checked == board.is_checked_move(f, t), (fen, f, t)
        if not checked:
            out.add((9 * f[1] + f[0], 9 * t[1] + t[0]))
    assert board.to_fen() == fen  # the undo restored the board and the side to move
    return out


def _kings_face(board):
    ks = [s for s in range(90) if abs(board[s]) == xq.KING]
    a, b = sorted(ks)
    return a % 9 == b % 9 and all(board[s] == 0 for s in range(a + 9, b, 9))


def test_legal_moves_equal_cchess_oracle(cchess):
    rng = np.random.default_rng(0)
    n = checks = mates = flying = 0
    for g in range(12):
        pos = xq.initial_position()
        for _ in range(130):
            mine = xq.legal_moves(pos)
            assert len(set(mine)) == len(mine)
            assert set(mine) == _oracle_moves(cchess, xq.to_fen(pos), check_api=n % 25 == 0), xq.to_fen(pos)
            n += 1
            checks += xq.in_check(pos)
            # a pseudo-legal move rejected only because it would leave the kings facing each other
            for mv in set(xq.pseudo_legal_moves(pos)) - set(mine):
                after = xq.make_move(pos, mv)
                flying += _kings_face(after.board)
            if not mine:
                mates += 1
                assert cchess.ChessBoard(xq.to_fen(pos)).no_moves()
                break
            pos = xq.make_move(pos, xq.policy_move(pos, "greedy" if g % 2 else "random", rng, mine))
    assert n >= 1000 and checks >= 20 and mates >= 2 and flying >= 5, (n, checks, mates, flying)


@pytest.mark.parametrize("fen, expect_mate, illegal", [
    # flying general: the red rook on e5 shields the kings; moving it off the e-file is illegal
    ("4k4/9/9/9/4R4/9/9/9/9/4K4 w", False, "e5d5"),
    # double-rook mate: Black to move, no legal move
    ("R3k4/R8/9/9/9/9/9/9/9/3K5 b", True, None),
    # cannon check through a screen; the king must step aside or the screen must be dealt with
    ("4k4/9/4n4/9/9/9/9/4C4/9/3K5 b", False, None),
])
def test_hand_made_positions(cchess, fen, expect_mate, illegal):
    pos = xq.from_fen(fen)
    mine = set(xq.legal_moves(pos))
    assert mine == _oracle_moves(cchess, fen, check_api=True)
    assert (not mine) == expect_mate
    assert xq.to_fen(pos) == fen
    if illegal:
        assert xq.iccs_to_move(illegal) in set(xq.pseudo_legal_moves(pos)) - mine


def test_tokenizer_round_trip_and_length():
    games = xq.generate_games(3, policy="random", seed=1, max_plies=20)
    for g in games:
        ids = xq.encode(g)
        assert len(ids) == 4 * len(g) + 1 and ids[0] == xq.START_ID
        assert xq.decode(ids) == "".join(g)
        assert ids.max() < len(xq.VOCAB) == 20
    assert xq.decode(np.concatenate([xq.encode("h2e2"), [0, 0]])) == "h2e2"


def test_generate_games_is_seeded_and_legal():
    a = xq.generate_games(2, policy="greedy", seed=3, max_plies=30)
    assert a == xq.generate_games(2, policy="greedy", seed=3, max_plies=30)
    for g in a:
        pos = xq.initial_position()
        for mv in g:
            pos = xq.make_move(pos, xq.parse_move(pos, mv))


def test_greedy_policy_and_game_results():
    """The material-greedy policy picks among the legal captures of the most valuable piece (every legal move
    when nothing can be captured), by brute force over the positions of seeded games; a game that stops
    before `max_plies` ends in a position whose side to move has no legal move and loses (1 = Red won)."""
    rng = np.random.default_rng(0)
    results, captures = set(), 0
    for i in range(12):
        moves, result = xq.play_game("greedy", "random" if i % 2 else "greedy", rng=rng, max_plies=150)
        pos = xq.initial_position()
        for ply, mv in enumerate(moves):
            legal = xq.legal_moves(pos)
            if ply % 5 == 0:
                value = {m: xq.PIECE_VALUES[abs(pos.board[m[1]])] if pos.board[m[1]] else 0.0 for m in legal}
                best = max(value.values())
                expected = {m for m in legal if value[m] == best}
                assert set(xq.greedy_choices(pos, legal)) == expected
                assert xq.policy_move(pos, "greedy", np.random.default_rng(ply), legal) in expected
                captures += 0 < best < xq.PIECE_VALUES[xq.KING] and len(expected) < len(legal)
            pos = xq.make_move(pos, xq.parse_move(pos, mv))
        if len(moves) < 150:
            assert not xq.legal_moves(pos) and result == (0.0 if pos.side == 1 else 1.0)
        else:
            assert result == 0.5
        results.add(result)
    assert results == {0.0, 0.5, 1.0} and captures >= 20, (results, captures)


def test_curriculum_schedule():
    """Su's script: 512 // n with n = 8, 4, 2, 1, switching at 20k, 40k, 80k batches."""
    f = lambda s: chess.curriculum_maxlen(s, max_len=512, boundaries=(20000, 40000, 80000))
    assert [f(0), f(19999), f(20000), f(39999), f(40000), f(79999), f(80000), f(10 ** 6)] == [
        64, 64, 128, 128, 256, 256, 512, 512]


PLAYER_CONTEXT = 4 * 26 + 1  # an opening move + 25 player plies


@pytest.fixture(scope="module")
def model():
    return GPT(len(xq.VOCAB), 16, 2, 1, 32, rngs=nnx.Rngs(0))


def test_batched_cached_scores_equal_full_forward(model):
    """score_moves (history in a padded KV cache, all moves as one 4-token chunk) equals, move by move,
    Σ log max(softmax, 1e-8) of a full forward over [history + move] (1e-5). The reference runs every
    [history + move] as one right-padded batch (causal: padding after a sequence cannot change its
    logits) and takes the floored log-softmax in float64 NumPy."""
    hists = [["h2e2", "h9g7"], []]
    cands = [["b0c2", "h0g2", "e2e6"], ["h2e2", "a3a4"]]
    # the context of the self-play test below (one compiled program for both); histories of ≤ 2 moves
    # leave ≥ 96 cache slots of padding, which the scores must ignore
    scores = chess.score_moves(model, hists, cands, context=PLAYER_CONTEXT)
    seqs = [xq.encode(h + [mv]) for h, cs in zip(hists, cands) for mv in cs]
    ids = np.zeros((len(seqs), 13), np.int32)
    for i, q in enumerate(seqs):
        ids[i, :len(q)] = q
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)), np.float64)  # [5, 13, V]
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    logp = np.log(np.maximum(prob / prob.sum(-1, keepdims=True), 1e-8))
    refs = [sum(logp[i, len(q) - 5 + j, q[len(q) - 4 + j]] for j in range(4)) for i, q in enumerate(seqs)]
    np.testing.assert_allclose(np.concatenate(scores), refs, atol=1e-5, rtol=0)


def _floored_move_scores(model, hists, cands):
    """Σ_i log max(p(c_i | h, c_<i), 1e-8) of each candidate by one full forward over the right-padded batch of
    all [history + move] sequences (causal: padding after a sequence cannot change its logits), softmax in
    float64; also returns the smallest probability met."""
    seqs = [xq.encode(h + [mv]) for h, cs in zip(hists, cands) for mv in cs]
    ids = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    for i, q in enumerate(seqs):
        ids[i, :len(q)] = q
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)), np.float64)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    p = np.array([[prob[i, len(q) - 5 + j, q[len(q) - 4 + j]] for j in range(4)] for i, q in enumerate(seqs)])
    scores = np.log(np.maximum(p, 1e-8)).sum(axis=1)
    return np.split(scores, np.cumsum([len(c) for c in cands])[:-1]), p.min()


def test_choose_moves_is_the_argmax_of_floored_scores_over_legal_moves():
    """A peaked model (tied embeddings ×60, so some probabilities fall below the 1e-8 floor): the scores of
    `score_moves` equal the floored full-forward sums (1e-4), and `choose_moves` plays their argmax among
    the legal moves of each position (taken from `xq.legal_moves`, itself checked against cchess above)."""
    peaked = GPT(len(xq.VOCAB), 16, 2, 1, 32, rngs=nnx.Rngs(0))
    peaked.token_embedding.embedding[...] = peaked.token_embedding.embedding[...] * 60.0
    hists = [["h2e2", "h9g7"], ["b0c2"]]
    legal = []
    for h in hists:
        pos = xq.initial_position()
        for m in h:
            pos = xq.make_move(pos, xq.iccs_to_move(m))
        legal.append([xq.move_to_iccs(m) for m in xq.legal_moves(pos)])
    refs, p_min = _floored_move_scores(peaked, hists, legal)
    assert p_min < 1e-9  # the floor binds
    for got, ref in zip(chess.score_moves(peaked, hists, legal, context=PLAYER_CONTEXT), refs):
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    for mv, moves, ref in zip(chess.choose_moves(peaked, hists, context=PLAYER_CONTEXT), legal, refs):
        top = np.sort(ref)[::-1]
        assert top[0] - top[1] > 1e-3  # a clear argmax
        assert mv == moves[int(np.argmax(ref))]


def test_greedy_next_moves_equal_full_forward_argmax():
    """Unconstrained greedy generation of the next 4 characters equals 4 argmax steps of the full forward
    after each history; a generated [PAD] is shown as '?' ([PAD]'s tied embedding ×3 makes it likely)."""
    m = GPT(len(xq.VOCAB), 16, 2, 1, 32, rngs=nnx.Rngs(0))
    m.token_embedding.embedding[...] = m.token_embedding.embedding[...].at[xq.PAD_ID].multiply(3.0)
    hists = [["h2e2", "h9g7"], [], ["b0c2"]]
    full = nnx.jit(lambda m, x: m(x))
    expected = []
    for h in hists:
        ids = list(xq.encode(h))
        for _ in range(4):  # right-padded to 13 tokens: one compile (causal, so the padding is unseen)
            logits = np.asarray(full(m, jnp.asarray([ids + [0] * (13 - len(ids))])))[0, len(ids) - 1]
            ids.append(int(np.argmax(logits)))
        expected.append("".join(xq.VOCAB[t] if t else "?" for t in ids[-4:]))
    assert chess.greedy_next_moves(m, hists, context=PLAYER_CONTEXT) == expected
    assert any("?" in e for e in expected) and any("?" not in e for e in expected)


def test_lm_loss_and_encode_games_equal_numpy(model):
    """encode_games: [START] + the ICCS characters, right-padded, lengths 4·plies + 1; lm_loss: the mean over
    real positions of the float64 CE of token i + 1 given tokens ≤ i, and the number of predicted tokens."""
    games = [["h2e2", "h9g7", "b0c2"], ["b0c2"], ["h2e2", "h9g7"]]
    tok, lengths = chess.encode_games(games, 4)
    assert tok.shape == (3, 17) and lengths.tolist() == [13, 5, 9]
    for t, g in zip(tok, games):
        assert t.tolist() == xq.encode(g).tolist() + [xq.PAD_ID] * (17 - 4 * len(g) - 1)
    loss, count = nnx.jit(chess.lm_loss)(model, jnp.asarray(tok), jnp.asarray(lengths))
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(tok)), np.float64)  # causal: padding after a row is unseen
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = [-logp[r, i, tok[r, i + 1]] for r in range(3) for i in range(lengths[r] - 1)]
    assert int(count) == len(ce) == 24
    np.testing.assert_allclose(float(loss), np.mean(ce), rtol=1e-5)


def test_player_only_plays_legal_moves(cchess, model):
    """200 self-play plies of the move-scoring player, every move accepted by cchess: 8 games of 25
    player plies (one full batch of SCORE_ROWS positions per call), each after a different opening move
    (the player is deterministic, so games from one start would all be the same game)."""
    assert chess.SCORE_ROWS == 8
    openings = [xq.move_to_iccs(m) for m in xq.legal_moves(xq.initial_position())][::5][:8]
    histories = [[mv] for mv in openings]
    boards = [cchess.ChessBoard(xq.INITIAL_FEN) for _ in range(8)]
    played = 0
    for turn in range(26):
        moves = openings if turn == 0 else chess.choose_moves(model, histories, context=PLAYER_CONTEXT)
        for h, b, mv in zip(histories, boards, moves):
            if mv is None:
                continue
            f, t = xq.iccs_to_move(mv)
            f, t = (f % 9, f // 9), (t % 9, t // 9)
            assert b.is_valid_move(f, t) and not b.is_checked_move(f, t), mv
            b.move(f, t)
            b.next_turn()
            if turn:
                h.append(mv)
                played += 1
    assert played == 200 and len(set(openings)) == 8
    assert len({tuple(h[1:]) for h in histories}) > 1  # the player's replies differ between games


@pytest.mark.parametrize("make, message", [
    (lambda: xq.encode("h2e"), "`moves` must be a string of 4-character ICCS moves"),
    (lambda: xq.encode("h2x2"), "(file a-i, rank 0-9); got 'h2x2'"),
    (lambda: xq.decode(np.array([0, 20])), "`ids` must be token ids in [0, 20)"),
    (lambda: xq.parse_move(xq.initial_position(), "a0a5"), "`iccs` must be a legal move in"),
    (lambda: xq.parse_move(xq.from_fen("4k4/9/9/9/4R4/9/9/9/9/4K4 w"), "e5d5"), "`iccs` must be a legal move"),
    (lambda: xq.from_fen("9/9 w"), "`fen` must have 10 ranks"),
    (lambda: xq.generate_games(0), "`n` must be a positive int; got 0"),
    (lambda: xq.policy_move(xq.initial_position(), "minimax", np.random.default_rng(0)), "`policy` must be one of"),
    (lambda: chess.curriculum_maxlen(0, max_len=8, boundaries=(3, 2, 1)), "`boundaries` must be 3 non-decreasing"),
    (lambda: chess.move_ids([]), "`moves` must be a non-empty list"),
    (lambda: chess.check_batch_mesh(ml_collections.ConfigDict(dict(batch_size=0, mesh=dict(data=-1)))),
     "`batch_size` must be a positive multiple of the batch-parallel device count 1"),
    (lambda: chess.learning_rate_schedule(ml_collections.ConfigDict(dict(learning_rate=1e-3, lr_schedule="step",
                                                                         num_steps=10))),
     "`lr_schedule` must be one of ('constant', 'cosine'); got 'step'"),
    (lambda: chess.checkpoint_every(ml_collections.ConfigDict(dict(checkpoint_every=2.5, num_steps=10))),
     "`checkpoint_every` must be an int >= 1 (0 or None: only at the end); got 2.5"),
    (lambda: chess.learning_rate_schedule(ml_collections.ConfigDict(dict(learning_rate=0.0, num_steps=10))),
     "`learning_rate` must be a finite number > 0; got 0.0"),
    (lambda: chess.learning_rate_schedule(ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=-1,
                                                                         num_steps=10))),
     "`warmup_steps` must be an int >= 0; got -1"),
])
def test_bad_inputs(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)


class _StopAfter:
    """A metric writer that interrupts training (like a kill) when asked to log `step`."""

    def __init__(self, step):
        self.step = step

    def write(self, step, metrics):
        if step >= self.step:
            raise KeyboardInterrupt(f"interrupted at step {step}")


def test_training_interrupted_then_resumed_is_bit_identical(tmp_path):
    """Training stopped after the step-4 checkpoint (mid-curriculum: maxlen 8 of 17) and run again on the
    same workdir resumes at step 4 and ends with the parameters, per-step losses and `rng` state of an
    uninterrupted run, bit for bit (the batch stream is replayed, the Adam state restored)."""
    c = ml_collections.ConfigDict(dict(seed=0, d_model=16, num_heads=2, num_layers=1, ffn_dim=32,
                                       learning_rate=1e-3, lr_schedule="cosine", batch_size=4, num_steps=8,
                                       log_every=1, checkpoint_every=4, mesh=dict(data=-1)))
    tok, ln = chess.encode_games(xq.generate_games(12, policy="greedy", seed=0, max_plies=4), 4)
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    model_a, losses_a = chess.train(c, tok, ln, rng=rng_a, workdir=str(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        chess.train(c, tok, ln, rng=np.random.default_rng(0), writer=_StopAfter(5),
                    workdir=str(tmp_path / "resumed"))
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["4"]
    model_b, losses_b = chess.train(c, tok, ln, rng=rng_b, workdir=str(tmp_path / "resumed"))
    np.testing.assert_array_equal(losses_a, losses_b)
    assert np.all(losses_a > 0)
    pa, pb = nnx.state(model_a, nnx.Param), nnx.state(model_b, nnx.Param)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert rng_a.integers(1 << 30) == rng_b.integers(1 << 30)
    # a checkpoint of another model size is a named error, not an orbax traceback
    with pytest.raises(ValueError, match="holds a checkpoint .step 8. whose state does not match"):
        chess.train(ml_collections.ConfigDict(dict(c, d_model=32)), tok, ln, rng=np.random.default_rng(0),
                    workdir=str(tmp_path / "resumed"))


def test_nan_loss_stops_training_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    """`resumable_loop` with a step whose loss turns NaN at step 5: NonFiniteError names the step, and the
    checkpoints on disk are the good ones (2 and 4), not a poisoned one."""
    from kexue_jax.core import sharding
    from kexue_jax.core.train import NonFiniteError

    c = ml_collections.ConfigDict(dict(num_steps=8, checkpoint_every=2, log_every=100))
    mesh = sharding.make_mesh(dict(data=-1))
    rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)

    def train_step(params, opt_state, x):
        loss = jnp.where(opt_state >= 5, jnp.nan, jnp.mean(x))
        return params + 1.0, opt_state + 1, loss

    make_batch = lambda step: (dict(x=np.full((8,), step + 1.0, np.float32)), {})  # noqa: E731
    with pytest.raises(NonFiniteError) as err:
        chess.resumable_loop(c, jnp.zeros(3), jnp.int32(0), train_step, make_batch, rep=rep, bsh=bsh,
                             workdir=str(tmp_path))
    assert "metric 'train/loss' became nan at step 5" in str(err.value)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    # the good run resumes from 4 when the fault is gone
    ok_step = lambda p, o, x: (p + 1.0, o + 1, jnp.mean(x))  # noqa: E731
    params, losses = chess.resumable_loop(c, jnp.zeros(3), jnp.int32(0), ok_step, make_batch, rep=rep, bsh=bsh,
                                          workdir=str(tmp_path))
    np.testing.assert_array_equal(np.asarray(params), np.full(3, 8.0))
    np.testing.assert_array_equal(losses, np.arange(1, 9, dtype=np.float32))


def test_parameters_made_non_finite_with_a_finite_loss_are_never_checkpointed(tmp_path):
    """The 6th update (opt_state 5) makes the parameters NaN while its loss (computed before it) is finite: the
    run stops at checkpoint 6 naming that update, and nothing poisoned is on disk (before, checkpoint 6 held NaN
    parameters and the NaN loss of step 7 said that the last good checkpoint was kept)."""
    from kexue_jax.core import sharding
    from kexue_jax.core.train import NonFiniteError

    c = ml_collections.ConfigDict(dict(num_steps=8, checkpoint_every=2, log_every=100))
    mesh = sharding.make_mesh(dict(data=-1))
    rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)

    def train_step(params, opt_state, x):  # the loss reads the parameters before the update, as a real step
        loss = jnp.mean(x) + jnp.sum(params)
        return params + jnp.where(opt_state == 5, jnp.nan, 1.0), opt_state + 1, loss

    make_batch = lambda step: (dict(x=np.full((8,), step + 1.0, np.float32)), {})  # noqa: E731
    with pytest.raises(NonFiniteError, match=r"^the parameters became non-finite in the update of step 6 "):
        chess.resumable_loop(c, jnp.zeros(3), jnp.int32(0), train_step, make_batch, rep=rep, bsh=bsh,
                             workdir=str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_cosine_learning_rate_schedule_closed_form():
    """Linear warm-up (2% of the steps by default, or `warmup_steps`) to the peak, then ½(1 + cos(π·progress))
    from the peak down to 10%; 'constant' = the optional warm-up, then the peak."""
    config = ml_collections.ConfigDict(dict(learning_rate=2e-3, lr_schedule="cosine", num_steps=1000))
    sched = chess.learning_rate_schedule(config)
    peak, warmup, end = 2e-3, 20, 2e-4
    for step in (0, 10, 20, 300, 510, 999, 1000):
        if step <= warmup:
            want = peak * step / warmup
        else:
            want = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (1000 - warmup)))
        assert float(sched(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), step
    config.warmup_steps = 100  # an explicit warm-up replaces the 2% default
    sched = chess.learning_rate_schedule(config)
    assert float(sched(50)) == pytest.approx(1e-3, rel=1e-5)
    assert float(sched(550)) == pytest.approx(end + (peak - end) * 0.5 * (1 + math.cos(math.pi * 450 / 900)), rel=1e-5)
    config.lr_schedule = "constant"
    sched = chess.learning_rate_schedule(config)  # linear warm-up over warmup_steps, then the peak
    assert [float(sched(t)) for t in (0, 25, 100, 999)] == pytest.approx([0.0, 5e-4, 2e-3, 2e-3], rel=1e-6)
    del config.warmup_steps
    assert chess.learning_rate_schedule(config) == 2e-3


def test_config_variants_and_unknown_variant():
    """The capacity variants change only the depth (and `long12` also the step count); a misspelt variant is
    an error, not a silent default run."""
    from experiments import reproduce
    path = os.path.join(reproduce.REPO, "experiments", "attention", "xiangqi_gpt.py")
    full, deep, deep12, long12 = (reproduce.load_config(path, arg) for arg in (None, "deep", "deep12", "long12"))
    assert (full.num_layers, deep.num_layers, deep12.num_layers, long12.num_layers) == (3, 6, 12, 12)
    assert (full.num_steps, long12.num_steps) == (4000, 8000)
    for c, changed in ((deep, {"num_layers"}), (deep12, {"num_layers"}), (long12, {"num_layers", "num_steps"})):
        assert {k: v for k, v in c.items() if k not in changed} == {k: v for k, v in full.items() if k not in changed}
    with pytest.raises(ValueError, match="arg must be one of .*got 'deep6'"):
        reproduce.load_config(path, "deep6")
