#pragma once
// Wall-clock time per named region, for "where does a step's time go". Off unless the environment
// sets MOE_PROFILE=1; then each MOE_PROFILE_SCOPE adds its duration to a table printed by
// profile_report(). A name "region: part" times a part of another region (nested inside it): its
// share is of the same total, which it is not added to. Use it only outside parallel regions (it
// is not thread-safe by design: the regions it times are the serial calls that fan out to
// parallel_for).
#include <cstdio>

namespace moe {

bool profile_enabled();
void set_profiling(bool on);  // the CLI from MOE_PROFILE, read once by moe::apply_environment
void profile_add(const char* name, double seconds);
void profile_report(FILE* out);
void profile_reset();
double now_seconds();

class ProfileScope {
public:
    explicit ProfileScope(const char* name) : name_(name), t0_(profile_enabled() ? now_seconds() : 0) {}
    ~ProfileScope() {
        if (profile_enabled()) profile_add(name_, now_seconds() - t0_);
    }

private:
    const char* name_;
    double t0_;
};

}  // namespace moe

#define MOE_PROFILE_CAT2(a, b) a##b
#define MOE_PROFILE_CAT(a, b) MOE_PROFILE_CAT2(a, b)
#define MOE_PROFILE_SCOPE(name) ::moe::ProfileScope MOE_PROFILE_CAT(moe_prof_, __LINE__)(name)
