#pragma once
// Regular expressions of tokenizer.json (Split / Replace patterns, the ByteLevel GPT-2 pattern)
// through PCRE2 in UTF + UCP mode, so \p{L}, \p{N}, \s and lookahead such as \s+(?!\S) behave as
// in Oniguruma, which the Python `tokenizers` uses. Matches are enumerated the way the `onig`
// crate's find_iter does (an empty match right where the previous match ended is skipped and the
// search moves on by one character). A pattern that runs into PCRE2's match limit (catastrophic
// backtracking) is a moe::error naming the pattern's place in the file, not a hang.
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::hf {

class Regex {
public:
    enum class Syntax { onig, literal };
    // `where` names the field in errors, e.g. "tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex".
    Regex(std::string_view pattern, Syntax syntax, std::string where);
    ~Regex();
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    // Appends the [start, end) byte ranges of every match in `text` (valid UTF-8).
    void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;
    const std::string& where() const { return where_; }

private:
    struct Code;
    std::unique_ptr<Code> code_;
    std::string where_;
};

}  // namespace moe::hf
