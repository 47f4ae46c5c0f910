export function suffix() { return "lib-v1"; }
