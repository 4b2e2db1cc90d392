#pragma once
// Counter-based random numbers: every draw is a pure function of (seed, stream, counter), so a
// resumed run reproduces exactly the draws of an uninterrupted one without saving RNG state.
#include <cmath>
#include <cstdint>

namespace moe {

inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

class Rng {
public:
    Rng(uint64_t seed, uint64_t stream = 0) : state_(splitmix64(seed ^ splitmix64(stream + 0x1234567ull))) {}
    uint64_t next_u64() {
        state_ += 0x9E3779B97F4A7C15ull;
        uint64_t z = state_;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    // uniform in [0, 1) with 53 random bits
    double uniform() { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }
    // uniform integer in [0, n)
    uint64_t below(uint64_t n) { return next_u64() % n; }
    // standard normal (Box-Muller, one value per call)
    double normal() {
        double u1 = uniform();
        double u2 = uniform();
        if (u1 < 1e-300) u1 = 1e-300;
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }

private:
    uint64_t state_;
};

}  // namespace moe
