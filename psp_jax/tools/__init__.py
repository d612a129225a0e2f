"""Command-line tools: flags and one-line failures (cli), class weights. With convert/ and
export/, the top layer under the scripts."""
