# Doxygen INPUT_FILTER for kvtier's headers: their contracts are plain // comments (STYLE.md), which
# doxygen ignores. This turns them into doc comments on the fly, keeping line numbers:
#   - the comment opening the file becomes the file's documentation (\file);
#   - a comment on its own line documents what follows (///);
#   - a comment after code documents that member (///<), with the comment lines aligned under it
#     (its continuation) joined to it.
# Usage: awk -f doxygen_filter.awk header.h
function flush() {
  if (held != "") print held
  for (; blanks > 0; blanks--) print ""
  held = ""
  held_col = 0
}
# Column of the first // outside a string literal; 0 if none.
function comment_col(line,    i, c, quoted) {
  quoted = 0
  for (i = 1; i < length(line); i++) {
    c = substr(line, i, 1)
    if (c == "\\" && quoted) { i++; continue }
    if (c == "\"") quoted = !quoted
    if (!quoted && substr(line, i, 2) == "//") return i
  }
  return 0
}
{
  line = $0
  col = comment_col(line)
  code = col > 0 ? substr(line, 1, col - 1) : line
  if (col > 0 && code ~ /^[ \t]*$/) {                 # a comment line
    text = substr(line, col + 2)
    sub(/^ /, "", text)
    if (held != "" && col == held_col) {               # continues the member comment above
      held = held " " text
      blanks++
      next
    }
    flush()
    if (!seen_code && !file_done) {                    # the file's opening comment
      print code "/// \\file " 
      file_done = 1
    }
    print code "/// " text
    next
  }
  if (col > 0) {                                       # code, then a comment about it
    flush()
    if (code !~ /^[ \t]*#/) {
      text = substr(line, col + 2)
      sub(/^ /, "", text)
      held = code "///< " text
      held_col = col
      seen_code = 1
      next
    }
  }
  flush()
  if (line !~ /^[ \t]*$/) seen_code = 1
  print line
}
END { flush() }
