#ifndef OFFSITE_COMMON_SPLITMIX64_H_
#define OFFSITE_COMMON_SPLITMIX64_H_

// SplitMix64 (Steele, Lea, Flood 2014), the project's one copy: a state that
// advances by kSplitMix64Gamma, each state scrambled into an output. Used to
// derive independent seeds (scenes, rendered images) and as a counter-based
// stream (LoRA's dropout mask: output j is a pure function of (seed, j)).

#include <cstdint>

namespace offsite {

inline constexpr uint64_t kSplitMix64Gamma = 0x9e3779b97f4a7c15ULL;

// The output scrambler, applied to a state.
inline uint64_t SplitMix64Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The generator's next output from `state`: advance once, scramble.
inline uint64_t SplitMix64(uint64_t state) { return SplitMix64Mix(state + kSplitMix64Gamma); }

}  // namespace offsite

#endif  // OFFSITE_COMMON_SPLITMIX64_H_
