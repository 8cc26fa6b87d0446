//! Hyper-V Replica Log files: reader, writer, chains and coalescing. TODO(helper).
