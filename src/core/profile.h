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
// the CLI from MOE_PROFILE, read once by moe::apply_environment; a bench may turn it on after its
// warm-up from another thread (the table itself is the engine thread's alone)
void set_profiling(bool on);
void profile_add(const char* name, double seconds);
void profile_report(FILE* out);
void profile_reset();
double now_seconds();

class ProfileScope {
public:
    explicit ProfileScope(const char* name) : name_(name), on_(profile_enabled()), t0_(on_ ? now_seconds() : 0) {}
    ~ProfileScope() {
        if (on_) profile_add(name_, now_seconds() - t0_);  // a scope begun while off adds nothing
    }

private:
    const char* name_;
    bool on_;
    double t0_;
};

}  // namespace moe

#define MOE_PROFILE_CAT2(a, b) a##b
#define MOE_PROFILE_CAT(a, b) MOE_PROFILE_CAT2(a, b)
#define MOE_PROFILE_SCOPE(name) ::moe::ProfileScope MOE_PROFILE_CAT(moe_prof_, __LINE__)(name)
