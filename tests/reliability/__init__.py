"""The reliability and security suite: bad input, fuzzing and safe defaults against real servers."""
