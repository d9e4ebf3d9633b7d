// Scrolling that follows the answer as it grows, unless the reader scrolls up to read something
// else: then a "Jump to latest" button brings them back (and following resumes).

/** How close to the bottom (px) still counts as "at the end". */
const SLACK = 24;

function distanceToEnd() {
  const root = document.documentElement;
  return root.scrollHeight - (root.scrollTop + root.clientHeight);
}

/**
 * Creates the follower. `start(turn)` begins a new exchange (placing it in view above the
 * sticky composer), `follow()` is called after each render, `toEnd()` scrolls to the end.
 */
export function createFollower({ button }) {
  let following = true;
  // Set while the page scrolls itself, so that its own scroll event is not taken for the reader's.
  let ownScroll = false;

  function toEnd() {
    ownScroll = true;
    // The composer is sticky at the bottom of the page's flow, so the end of the document is the
    // end of the log just above it.
    scrollTo({ top: document.documentElement.scrollHeight, behavior: "instant" });
    requestAnimationFrame(() => (ownScroll = false));
  }

  function show(hidden) {
    button.hidden = hidden;
  }

  addEventListener("scroll", () => {
    const atEnd = distanceToEnd() <= SLACK;
    if (atEnd) {
      following = true;
      show(true);
    } else if (!ownScroll) {
      following = false;
      show(false);
    }
  }, { passive: true });
  // Content that grows while the reader is away from the end: offer the way back.
  const offer = () => {
    if (!following && distanceToEnd() > SLACK) show(false);
  };

  button.addEventListener("click", () => {
    following = true;
    show(true);
    toEnd();
  });

  return {
    start() {
      following = true;
      show(true);
      toEnd();
    },
    follow() {
      if (following) toEnd();
      else offer();
    },
    toEnd,
  };
}
