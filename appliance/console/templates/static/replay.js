// The replay scrubber: entries up to the range's value are shown, the one at it is marked.
(function () {
  var range = document.getElementById("scrubber");
  if (!range) return;
  var entries = document.querySelectorAll("#timeline .entry");
  var position = document.getElementById("position");
  function show() {
    var at = Number(range.value);
    entries.forEach(function (li) {
      var i = Number(li.dataset.index);
      li.hidden = i > at;
      li.classList.toggle("current", i === at);
    });
    position.textContent = (at + 1) + " / " + entries.length;
  }
  range.addEventListener("input", show);
  show();
})();
