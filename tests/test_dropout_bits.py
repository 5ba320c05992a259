"""Dropout's random bits: the words models.layers draws are Threefry-2x32 (Salmon et al. 2011) output words of
the layer key — checked against a numpy Threefry written from the Random123 specification, which itself must
reproduce Random123's known-answer vectors — and their 16-bit halves are balanced and uncorrelated."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro.models.layers import _words

ROT = (13, 15, 26, 6, 17, 29, 16, 24)


def threefry2x32(key, c0, c1):
    """Threefry-2x32, 20 rounds, in numpy: key (k0, k1), counters c0, c1 (uint32 arrays) → (y0, y1)."""
    ks = [np.uint32(key[0]), np.uint32(key[1]), np.uint32(key[0] ^ key[1] ^ 0x1BD11BDA)]
    x0, x1 = (np.asarray(c0, np.uint32) + ks[0]), (np.asarray(c1, np.uint32) + ks[1])
    for r in range(20):
        x0 = x0 + x1
        x1 = (x1 << np.uint32(ROT[r % 8])) | (x1 >> np.uint32(32 - ROT[r % 8]))
        x1 = x1 ^ x0
        if r % 4 == 3:
            s = r // 4 + 1
            x0 = x0 + ks[s % 3]
            x1 = x1 + ks[(s + 1) % 3] + np.uint32(s)
    return x0, x1


def test_numpy_threefry_reproduces_random123_known_answers():
    for key, ctr, want in [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
                           ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
                           ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]:
        y0, y1 = threefry2x32(key, np.uint32([ctr[0]]), np.uint32([ctr[1]]))
        assert (int(y0[0]), int(y1[0])) == want


def test_dropout_words_are_both_threefry_outputs_of_the_layer_key():
    """m words from m/2 hashes: word i < m/2 is y0 of counters (i, i + m/2), word m/2 + i its y1 (an odd m gets
    one zero counter appended and its last word dropped); typed and raw threefry keys give the same words."""
    key = jax.random.fold_in(jax.random.PRNGKey(7), 3)
    k = tuple(int(v) for v in np.asarray(jax.random.key_data(key)))
    for m in (10, 11, 4096):
        c = np.arange(m + m % 2, dtype=np.uint32)
        if m % 2:
            c[-1] = 0
        y0, y1 = threefry2x32(k, c[:len(c) // 2], c[len(c) // 2:])
        want = np.concatenate([y0, y1])[:m]
        np.testing.assert_array_equal(np.asarray(_words(key, m)), want)
        np.testing.assert_array_equal(np.asarray(_words(jax.random.wrap_key_data(jnp.asarray(k, jnp.uint32)), m)),
                                      want)


def test_dropout_halfwords_are_balanced_and_uncorrelated():
    """2²⁰ 16-bit uniforms: every bit is 1 with frequency ½, and the two words of one hash (i, i + m/2), and the
    two halves of one word, are uncorrelated — each within 6 standard deviations of an ideal source."""
    m = 2 ** 19
    words = np.asarray(_words(jax.random.PRNGKey(11), m))
    half = words.view(np.uint16).astype(np.int64)                      # [2m] lo, hi, lo, hi, …
    bits = (half[:, None] >> np.arange(16)) & 1
    sd = np.sqrt(0.25 / len(half))
    assert np.all(np.abs(bits.mean(0) - 0.5) <= 6 * sd)
    u = (half - 32767.5) / 65536 * np.sqrt(12)                          # unit variance
    pairs = {"halves of a word": (u[0::2], u[1::2]), "words of a hash": (u[:m], u[m:])}
    for name, (a, b) in pairs.items():
        assert abs(np.mean(a * b)) <= 6 / np.sqrt(len(a)), name


def test_dropout_words_per_example_under_vmap_and_other_prngs():
    """Per-example keys fold_in(key, id) under vmap give each example the words of its own key; a key of another
    PRNG implementation (rbg) gets jax.random.bits' words unchanged."""
    key = jax.random.PRNGKey(5)
    ids = jnp.array([3, 0, 9])
    got = np.asarray(jax.vmap(lambda i: _words(jax.random.fold_in(key, i), 6))(ids))
    for row, i in zip(got, [3, 0, 9]):
        k = tuple(int(v) for v in np.asarray(jax.random.key_data(jax.random.fold_in(key, i))))
        y0, y1 = threefry2x32(k, np.arange(3, dtype=np.uint32), np.arange(3, 6, dtype=np.uint32))
        np.testing.assert_array_equal(row, np.concatenate([y0, y1]))
    rbg = jax.random.key(0, impl="rbg")
    np.testing.assert_array_equal(np.asarray(_words(rbg, 5)), np.asarray(jax.random.bits(rbg, (5,), jnp.uint32)))
