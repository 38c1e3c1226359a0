// holdfast JS client — placeholder until the client lands.
export const VERSION = "0.1.0";
