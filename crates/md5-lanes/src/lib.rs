//! MD5 of several buffers at once, one per 32-bit lane of an AVX2 register.
//!
//! MD5 is one long dependency chain per message: a core runs it at about 5
//! cycles per byte however wide its vector unit is, and on the small guests
//! volsnap runs on, the segments' MD5 (their ETags) was the biggest CPU cost
//! of a Swift backup. Independent messages, though, can share each
//! instruction: eight segments hashed in lockstep cost about what one costs
//! alone (bench/RESULTS-swift.md has the figures). The uploads give us the
//! independent messages: every segment in flight is hashed together with the
//! others while it is being sent.
//!
//! [`Lanes`] keeps up to [`LANES`] hashes in progress, each at its own offset
//! in its own buffer; [`Lanes::advance`] moves every active lane on by the
//! same number of 64-byte blocks. Without AVX2 the same work is done one lane
//! after another by the scalar code below (and tested against the `md-5`
//! crate either way).

/// How many messages are hashed in lockstep.
pub const LANES: usize = 8;

const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

const K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

const S: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9,
    14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15,
    21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

/// Which message word step `i` adds.
const fn word(i: usize) -> usize {
    match i / 16 {
        0 => i,
        1 => (5 * i + 1) % 16,
        2 => (3 * i + 5) % 16,
        _ => (7 * i) % 16,
    }
}

/// One 64-byte block into `state`, the plain way.
fn compress(state: &mut [u32; 4], block: &[u8]) {
    let mut m = [0u32; 16];
    for (w, c) in m.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    let [mut a, mut b, mut c, mut d] = *state;
    for i in 0..64 {
        let f = match i / 16 {
            0 => (b & c) | (!b & d),
            1 => (d & b) | (!d & c),
            2 => b ^ c ^ d,
            _ => c ^ (b | !d),
        };
        let t = f
            .wrapping_add(a)
            .wrapping_add(K[i])
            .wrapping_add(m[word(i)]);
        a = d;
        d = c;
        c = b;
        b = b.wrapping_add(t.rotate_left(S[i]));
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d]) {
        *s = s.wrapping_add(v);
    }
}

/// The MD5 of `data`, after `done` of its bytes (a multiple of 64) went into
/// `state`: the rest, the padding and the length.
fn finish(mut state: [u32; 4], data: &[u8], done: usize) -> [u8; 16] {
    let mut rest = &data[done..];
    while rest.len() >= 64 {
        compress(&mut state, &rest[..64]);
        rest = &rest[64..];
    }
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let blocks = if rest.len() < 56 { 1 } else { 2 };
    let bits = (data.len() as u64).wrapping_mul(8);
    tail[blocks * 64 - 8..blocks * 64].copy_from_slice(&bits.to_le_bytes());
    for block in tail[..blocks * 64].chunks_exact(64) {
        compress(&mut state, block);
    }
    let mut out = [0u8; 16];
    for (o, s) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&s.to_le_bytes());
    }
    out
}

/// One message being hashed: how far it got.
#[derive(Clone, Copy, Debug)]
struct Lane {
    state: [u32; 4],
    /// Bytes of the message already in `state` (a multiple of 64).
    done: usize,
}

/// Up to [`LANES`] MD5s in progress. A slot is `None` when free; the caller
/// keeps the messages and passes them to every call, slot for slot.
pub struct Lanes {
    lanes: [Option<Lane>; LANES],
    simd: bool,
}

impl Default for Lanes {
    fn default() -> Lanes {
        Lanes::new()
    }
}

impl Lanes {
    /// Eight free slots; the AVX2 code if this CPU has it.
    pub fn new() -> Lanes {
        Lanes {
            lanes: [None; LANES],
            simd: simd_available(),
        }
    }

    /// The scalar code only, whatever the CPU has (for tests and
    /// comparisons).
    #[cfg(test)]
    fn scalar() -> Lanes {
        Lanes {
            lanes: [None; LANES],
            simd: false,
        }
    }

    /// A free slot, if any.
    pub fn free_slot(&self) -> Option<usize> {
        self.lanes.iter().position(Option::is_none)
    }

    /// Starts hashing a new message in `slot`.
    pub fn start(&mut self, slot: usize) {
        self.lanes[slot] = Some(Lane {
            state: INIT,
            done: 0,
        });
    }

    /// Slots in use.
    pub fn active(&self) -> usize {
        self.lanes.iter().flatten().count()
    }

    /// Moves every active lane on by up to `max_blocks` whole blocks of its
    /// message (`data[slot]`), the same number for all: as many as the
    /// shortest remainder allows. Returns the number of blocks; 0 when some
    /// lane has less than one whole block left, which [`Lanes::finish`]
    /// then completes.
    pub fn advance(&mut self, data: &[&[u8]; LANES], max_blocks: usize) -> usize {
        let blocks = self
            .lanes
            .iter()
            .zip(data)
            .filter_map(|(lane, d)| lane.map(|l| (d.len() - l.done) / 64))
            .min()
            .unwrap_or(0)
            .min(max_blocks);
        if blocks == 0 {
            return 0;
        }
        if self.simd {
            self.advance_simd(data, blocks);
        } else {
            for (lane, d) in self.lanes.iter_mut().zip(data) {
                if let Some(l) = lane {
                    for block in d[l.done..l.done + blocks * 64].chunks_exact(64) {
                        compress(&mut l.state, block);
                    }
                    l.done += blocks * 64;
                }
            }
        }
        blocks
    }

    /// The slots whose message has less than one whole block left: ready
    /// for [`Lanes::finish`].
    pub fn finishable(&self, data: &[&[u8]; LANES]) -> Vec<usize> {
        (0..LANES)
            .filter(|&i| matches!(self.lanes[i], Some(l) if data[i].len() - l.done < 64))
            .collect()
    }

    /// Completes the MD5 of the message in `slot` and frees the slot.
    pub fn finish(&mut self, slot: usize, data: &[u8]) -> [u8; 16] {
        let lane = self.lanes[slot].take().expect("finishing a free lane");
        finish(lane.state, data, lane.done)
    }

    #[cfg(target_arch = "x86_64")]
    fn advance_simd(&mut self, data: &[&[u8]; LANES], blocks: usize) {
        // Free slots hash a zero block over and over: cheaper than a branch
        // per lane, and their result is thrown away.
        static IDLE: [u8; 64] = [0; 64];
        let mut ptrs = [IDLE.as_ptr(); LANES];
        let mut strides = [0usize; LANES];
        let mut state = [[0u32; LANES]; 4];
        for (i, lane) in self.lanes.iter().enumerate() {
            if let Some(l) = lane {
                ptrs[i] = data[i][l.done..].as_ptr();
                strides[i] = 64;
                for (w, s) in state.iter_mut().zip(l.state) {
                    w[i] = s;
                }
            }
        }
        // SAFETY: `simd` is set only when the CPU has AVX2 (checked at run
        // time); every active lane has at least `blocks` whole blocks from
        // its pointer (the minimum above), idle lanes re-read one block.
        unsafe { avx2::compress8(&mut state, &ptrs, &strides, blocks) };
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            if let Some(l) = lane {
                for (s, w) in l.state.iter_mut().zip(&state) {
                    *s = w[i];
                }
                l.done += blocks * 64;
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn advance_simd(&mut self, _: &[&[u8]; LANES], _: usize) {
        unreachable!("no SIMD lanes on this architecture")
    }
}

/// Whether this CPU runs the 8-lane code.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{K, LANES};
    use std::arch::x86_64::*;

    /// 8×8 transpose of 32-bit words: row `i` of the result is word `i` of
    /// every input row.
    #[target_feature(enable = "avx2")]
    unsafe fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }

    macro_rules! rotl {
        ($x:expr, $s:literal) => {
            _mm256_or_si256(
                _mm256_slli_epi32::<$s>($x),
                _mm256_srli_epi32::<{ 32 - $s }>($x),
            )
        };
    }

    /// `blocks` blocks of each lane into `state` (`state[j][lane]` is word
    /// `j` of that lane's MD5 state).
    ///
    /// # Safety
    /// The CPU has AVX2, and `ptrs[l] + k × strides[l]` points at 64
    /// readable bytes for every lane `l` and every `k < blocks`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn compress8(
        state: &mut [[u32; LANES]; 4],
        ptrs: &[*const u8; LANES],
        strides: &[usize; LANES],
        blocks: usize,
    ) {
        let load = |w: &[u32; LANES]| _mm256_loadu_si256(w.as_ptr().cast());
        let (mut a, mut b, mut c, mut d) = (
            load(&state[0]),
            load(&state[1]),
            load(&state[2]),
            load(&state[3]),
        );
        let ones = _mm256_set1_epi32(-1);
        for k in 0..blocks {
            let p: [*const u8; LANES] = std::array::from_fn(|l| ptrs[l].add(k * strides[l]));
            let lo = transpose(std::array::from_fn(|l| _mm256_loadu_si256(p[l].cast())));
            let hi = transpose(std::array::from_fn(|l| {
                _mm256_loadu_si256(p[l].add(32).cast())
            }));
            let m = |j: usize| if j < 8 { lo[j] } else { hi[j - 8] };
            let (aa, bb, cc, dd) = (a, b, c, d);
            // Each step adds the message word, the constant and `a` before
            // `b` is known, so that only the round function of `b`, one
            // add, the rotation and the last add wait for the step before
            // (G in its additive form: its `c & !d` half does not need `b`).
            macro_rules! step {
                ($early:expr, $f:expr, $i:literal, $s:literal) => {{
                    let early = _mm256_add_epi32(
                        _mm256_add_epi32(a, $early),
                        _mm256_add_epi32(_mm256_set1_epi32(K[$i] as i32), m(super::word($i))),
                    );
                    let t = _mm256_add_epi32(early, $f);
                    a = d;
                    d = c;
                    c = b;
                    b = _mm256_add_epi32(b, rotl!(t, $s));
                }};
            }
            let zero = _mm256_setzero_si256();
            // F = d ^ (b & (c ^ d)); G = (b & d) + (c & !d);
            // H = b ^ (c ^ d); I = c ^ (b | !d).
            macro_rules! ff {
                ($i:literal, $s:literal) => {
                    step!(
                        zero,
                        _mm256_xor_si256(d, _mm256_and_si256(b, _mm256_xor_si256(c, d))),
                        $i,
                        $s
                    )
                };
            }
            macro_rules! gg {
                ($i:literal, $s:literal) => {
                    step!(_mm256_andnot_si256(d, c), _mm256_and_si256(b, d), $i, $s)
                };
            }
            macro_rules! hh {
                ($i:literal, $s:literal) => {
                    step!(zero, _mm256_xor_si256(b, _mm256_xor_si256(c, d)), $i, $s)
                };
            }
            macro_rules! ii {
                ($i:literal, $s:literal) => {
                    step!(
                        zero,
                        _mm256_xor_si256(c, _mm256_or_si256(b, _mm256_xor_si256(d, ones))),
                        $i,
                        $s
                    )
                };
            }
            ff!(0, 7);
            ff!(1, 12);
            ff!(2, 17);
            ff!(3, 22);
            ff!(4, 7);
            ff!(5, 12);
            ff!(6, 17);
            ff!(7, 22);
            ff!(8, 7);
            ff!(9, 12);
            ff!(10, 17);
            ff!(11, 22);
            ff!(12, 7);
            ff!(13, 12);
            ff!(14, 17);
            ff!(15, 22);
            gg!(16, 5);
            gg!(17, 9);
            gg!(18, 14);
            gg!(19, 20);
            gg!(20, 5);
            gg!(21, 9);
            gg!(22, 14);
            gg!(23, 20);
            gg!(24, 5);
            gg!(25, 9);
            gg!(26, 14);
            gg!(27, 20);
            gg!(28, 5);
            gg!(29, 9);
            gg!(30, 14);
            gg!(31, 20);
            hh!(32, 4);
            hh!(33, 11);
            hh!(34, 16);
            hh!(35, 23);
            hh!(36, 4);
            hh!(37, 11);
            hh!(38, 16);
            hh!(39, 23);
            hh!(40, 4);
            hh!(41, 11);
            hh!(42, 16);
            hh!(43, 23);
            hh!(44, 4);
            hh!(45, 11);
            hh!(46, 16);
            hh!(47, 23);
            ii!(48, 6);
            ii!(49, 10);
            ii!(50, 15);
            ii!(51, 21);
            ii!(52, 6);
            ii!(53, 10);
            ii!(54, 15);
            ii!(55, 21);
            ii!(56, 6);
            ii!(57, 10);
            ii!(58, 15);
            ii!(59, 21);
            ii!(60, 6);
            ii!(61, 10);
            ii!(62, 15);
            ii!(63, 21);
            a = _mm256_add_epi32(a, aa);
            b = _mm256_add_epi32(b, bb);
            c = _mm256_add_epi32(c, cc);
            d = _mm256_add_epi32(d, dd);
        }
        let store = |w: &mut [u32; LANES], v| _mm256_storeu_si256(w.as_mut_ptr().cast(), v);
        store(&mut state[0], a);
        store(&mut state[1], b);
        store(&mut state[2], c);
        store(&mut state[3], d);
    }
}

/// The MD5 of one buffer with the scalar code (the lanes' fallback for a
/// lone message).
#[cfg(test)]
fn md5_one(data: &[u8]) -> [u8; 16] {
    finish(INIT, data, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn reference(data: &[u8]) -> [u8; 16] {
        Md5::digest(data).into()
    }

    fn message(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    #[test]
    fn scalar_matches_md5_at_every_tail_length() {
        for len in (0..300).chain([1000, 4096, 65_537]) {
            let m = message(len, 7);
            assert_eq!(md5_one(&m), reference(&m), "{len}");
        }
        assert_eq!(hex(&md5_one(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
    }

    /// Hashes `msgs` through the lanes as the uploader does: start them in
    /// turn, advance in small steps, finish what can be finished.
    fn through_lanes(mut lanes: Lanes, msgs: &[Vec<u8>], step: usize) -> Vec<[u8; 16]> {
        let mut out = vec![[0u8; 16]; msgs.len()];
        let mut slot_of: [Option<usize>; LANES] = [None; LANES];
        let mut next = 0;
        loop {
            while next < msgs.len() {
                let Some(slot) = lanes.free_slot() else { break };
                lanes.start(slot);
                slot_of[slot] = Some(next);
                next += 1;
            }
            if lanes.active() == 0 {
                return out;
            }
            let data: [&[u8]; LANES] =
                std::array::from_fn(|s| slot_of[s].map_or(&[][..], |m| &msgs[m][..]));
            lanes.advance(&data, step);
            for slot in lanes.finishable(&data) {
                out[slot_of[slot].take().unwrap()] = lanes.finish(slot, data[slot]);
            }
        }
    }

    #[test]
    fn lanes_of_different_lengths_match_md5() {
        let msgs: Vec<Vec<u8>> = [0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 5000, 64 * 37 + 3]
            .iter()
            .enumerate()
            .map(|(i, &len)| message(len, i as u8))
            .collect();
        let want: Vec<[u8; 16]> = msgs.iter().map(|m| reference(m)).collect();
        for step in [1, 3, 1000] {
            assert_eq!(
                through_lanes(Lanes::new(), &msgs, step),
                want,
                "simd, step {step}"
            );
            assert_eq!(
                through_lanes(Lanes::scalar(), &msgs, step),
                want,
                "scalar, step {step}"
            );
        }
    }

    #[test]
    fn simd_is_used_where_the_cpu_has_it() {
        // The lanes test above proves the AVX2 code only where it runs.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            Lanes::new().simd,
            std::arch::is_x86_feature_detected!("avx2")
        );
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use md5::{Digest, Md5};
    use std::time::Instant;

    #[test]
    #[ignore]
    fn print_speed() {
        let size = 64 << 20;
        let msgs: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; size]).collect();
        for lanes_n in [1usize, 2, 4, 8] {
            let t = Instant::now();
            let mut lanes = Lanes::new();
            for s in 0..lanes_n {
                lanes.start(s);
            }
            let data: [&[u8]; LANES] =
                std::array::from_fn(|s| if s < lanes_n { &msgs[s][..] } else { &[][..] });
            while lanes.advance(&data, 16384) > 0 {}
            for (s, d) in data.iter().enumerate().take(lanes_n) {
                lanes.finish(s, d);
            }
            let e = t.elapsed().as_secs_f64();
            println!("lanes {lanes_n}: {:.0} MiB/s", (lanes_n * 64) as f64 / e);
        }
        let t = Instant::now();
        let _ = Md5::digest(&msgs[0]);
        println!("md-5: {:.0} MiB/s", 64.0 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let _ = md5_one(&msgs[0]);
        println!("scalar here: {:.0} MiB/s", 64.0 / t.elapsed().as_secs_f64());
    }
}
