# The jupyter-faas bash runner. A request on stdin: a line with the count of fields, then each field as a line
# with its length in bytes followed by its bytes; the fields are the script, then a name and a value for each
# parameter. The answer, on the fd given as the last argument: "<exit status> <length>\n" and the script's stdout.
export LC_ALL=C
answer_fd=${!#}
while IFS= read -r count; do
  # Anything else than a request (the stream is damaged) ends the runner; the sandbox starts a new one.
  [[ $count =~ ^[0-9]+$ ]] || exit 2
  fields=()
  for ((i = 0; i < count; i++)); do
    IFS= read -r length
    [[ $length =~ ^[0-9]+$ ]] || exit 2
    field=
    if ((length > 0)); then
      IFS= read -r -d '' -N "$length" field
    fi
    fields+=("$field")
  done
  # Two subshells: the outer one's stdout is the result, the inner one is the cell, which may exit.
  out=$(
    # The cell cannot write into the answers, nor read the requests.
    exec {answer_fd}>&- </dev/null
    unset answer_fd
    positional=()
    for ((i = 1; i < count; i += 2)); do
      export "${fields[i]}=${fields[i + 1]}"
      positional+=("${fields[i + 1]}")
    done
    set -- "${positional[@]}"
    (eval "${fields[0]}")
    status=$?
    printf x
    exit "$status"
  )
  status=$?
  out=${out%x}
  out=${out%$'\n'}
  printf '%d %d\n%s' "$status" "${#out}" "$out" >&"$answer_fd"
done
