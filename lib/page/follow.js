// Scrolling that follows the answer as it grows, unless the reader scrolls up to read something
// else: then a "Jump to latest" button brings them back (and following resumes).

/** How close to the end (px) still counts as "at the end". */
const SLACK = 24;

function distanceToEnd() {
  const root = document.documentElement;
  return root.scrollHeight - (root.scrollTop + root.clientHeight);
}

/**
 * Creates the follower. `start()` begins a new exchange (placing it in view above the sticky
 * composer), `follow()` is called after each render, `toEnd()` scrolls to the end.
 */
export function createFollower({ button }) {
  let following = true;
  // Where the page last scrolled itself. It only ever scrolls down to the end, and a growing
  // answer does not move scrollTop, so a position above it means the reader scrolled up.
  let autoTop = 0;

  function toEnd() {
    const root = document.documentElement;
    // The composer is sticky at the bottom of the page's flow, so the end of the document is
    // the end of the log, just above it.
    scrollTo({ top: root.scrollHeight, behavior: "instant" });
    autoTop = root.scrollTop;
  }

  addEventListener("scroll", () => {
    if (distanceToEnd() <= SLACK) {
      following = true;
      button.hidden = true;
    } else if (document.documentElement.scrollTop < autoTop - SLACK) {
      following = false;
      button.hidden = false;
    }
  }, { passive: true });

  button.addEventListener("click", () => {
    following = true;
    button.hidden = true;
    toEnd();
  });

  return {
    start() {
      following = true;
      button.hidden = true;
      toEnd();
    },
    follow() {
      if (following) toEnd();
    },
    toEnd,
  };
}
