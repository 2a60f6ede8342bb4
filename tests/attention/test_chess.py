"""Xiangqi: the legal-move generator equals the cchess oracle (pseudo-legal moves filtered by
`is_checked_move`) on ~1500 positions from seeded games incl. checks, flying-general restrictions and
checkmates; tokenizer round trip and 4n + 1 tokens; the move-scoring player's batched cached scores equal
a one-at-a-time full-forward sum of log-softmax (1e-5) and its moves are legal (200 plies, oracle-checked);
the curriculum schedule; bad inputs.

cchess (LGPL, PyPI 1.25.5) is a test-time oracle only (requirements-test.txt; `make test` installs it);
the library never imports it.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax.attention import chess
from kexue_jax.attention.gpt import GPT
from kexue_jax.data import xiangqi as xq



@pytest.fixture(scope="module")
def cchess():
    return pytest.importorskip("cchess")


def _oracle_moves(cchess, fen):
    board = cchess.ChessBoard(fen)
    out = set()
    for f, t in board.create_moves():
        if board.is_valid_move(f, t) and not board.is_checked_move(f, t):
            out.add((9 * f[1] + f[0], 9 * t[1] + t[0]))
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
            assert set(mine) == _oracle_moves(cchess, xq.to_fen(pos)), xq.to_fen(pos)
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
    assert mine == _oracle_moves(cchess, fen)
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


def test_curriculum_schedule():
    """Su's script: 512 // n with n = 8, 4, 2, 1, switching at 20k, 40k, 80k batches."""
    f = lambda s: chess.curriculum_maxlen(s, max_len=512, boundaries=(20000, 40000, 80000))
    assert [f(0), f(19999), f(20000), f(39999), f(40000), f(79999), f(80000), f(10 ** 6)] == [
        64, 64, 128, 128, 256, 256, 512, 512]


@pytest.fixture(scope="module")
def model():
    return GPT(len(xq.VOCAB), 16, 2, 1, 32, rngs=nnx.Rngs(0))


def test_batched_cached_scores_equal_full_forward(model):
    """score_moves (history in a padded KV cache, all moves as one 4-token chunk) equals, move by move,
    Σ log max(softmax, 1e-8) of a full forward over [history + move] (1e-5)."""
    hists = [["h2e2", "h9g7"], []]
    cands = [["b0c2", "h0g2", "e2e6"], ["h2e2", "a3a4"]]
    scores = chess.score_moves(model, hists, cands, context=13)
    full = nnx.jit(lambda m, x: m(x))
    for h, cs, sc in zip(hists, cands, scores):
        for mv, s in zip(cs, sc):
            ids = xq.encode(h + [mv])
            logp = jnp.log(jnp.maximum(jax.nn.softmax(full(model, jnp.asarray(ids[None]))[0], axis=-1), 1e-8))
            ref = sum(float(logp[len(ids) - 5 + i, ids[len(ids) - 4 + i]]) for i in range(4))
            np.testing.assert_allclose(s, ref, atol=1e-5, rtol=0)


def test_player_only_plays_legal_moves(cchess, model):
    """200 self-play plies of the move-scoring player (4 games of 50), every move accepted by cchess."""
    histories = [[] for _ in range(4)]
    boards = [cchess.ChessBoard(xq.INITIAL_FEN) for _ in range(4)]
    for _ in range(50):
        moves = chess.choose_moves(model, histories, context=4 * 50 + 1)
        for h, b, mv in zip(histories, boards, moves):
            if mv is None:
                continue
            f, t = xq.iccs_to_move(mv)
            f, t = (f % 9, f // 9), (t % 9, t // 9)
            assert b.is_valid_move(f, t) and not b.is_checked_move(f, t), mv
            b.move(f, t)
            b.next_turn()
            h.append(mv)
    assert sum(len(h) for h in histories) == 200


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
])
def test_bad_inputs(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)
