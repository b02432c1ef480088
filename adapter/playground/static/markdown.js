// A small Markdown renderer for model output that is safe by construction: it builds DOM
// nodes with createElement and text nodes only, never innerHTML, so HTML or a script in
// the model's text is shown as the characters it is. Covers what chat models write:
// fenced code blocks, inline code, headings, lists, block quotes, rules, bold, italics
// and http(s) links. An unclosed fence (an answer still streaming) runs to the end.
(function () {
  "use strict";

  const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const LIST_ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const QUOTE = /^\s*>\s?(.*)$/;
  const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
  // inline: `code` | **strong** | __strong__ | *em* | _em_ | [label](http(s) url); underscores
  // inside a word (snake_case) are not emphasis
  const INLINE =
    /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|(?<!\w)__(?=\S)([\s\S]*?\S)__(?!\w)|\*(?=\S)([^*]*?\S)\*|(?<!\w)_(?=\S)([^_]*?\S)_(?!\w)|\[([^\]\n]+)\]\((https?:\/\/[^\s()]+)\)/g;

  function element(tag, text) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderInline(text, parent) {
    let last = 0;
    for (const match of text.matchAll(INLINE)) {
      if (match.index > last) parent.append(text.slice(last, match.index));
      if (match[1] !== undefined) {
        parent.append(element("code", match[2]));
      } else if (match[3] !== undefined || match[4] !== undefined) {
        const strong = element("strong");
        renderInline(match[3] ?? match[4], strong);
        parent.append(strong);
      } else if (match[5] !== undefined || match[6] !== undefined) {
        const emphasis = element("em");
        renderInline(match[5] ?? match[6], emphasis);
        parent.append(emphasis);
      } else {
        const link = element("a", match[7]);
        link.href = match[8]; // the pattern admits http(s) URLs only
        link.rel = "noopener noreferrer nofollow";
        link.target = "_blank";
        parent.append(link);
      }
      last = match.index + match[0].length;
    }
    if (last < text.length) parent.append(text.slice(last));
  }

  function renderLines(lines, parent) {
    lines.forEach((line, position) => {
      if (position > 0) parent.append(element("br"));
      renderInline(line, parent);
    });
  }

  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || LIST_ITEM.test(line) ||
      QUOTE.test(line) || RULE.test(line);
  }

  function codeBlock(lines, start, parent) {
    const [, fence, language] = lines[start].match(FENCE);
    let end = start + 1;
    while (end < lines.length && !lines[end].trim().startsWith(fence)) end += 1;
    const pre = element("pre");
    const code = element("code", lines.slice(start + 1, end).join("\n"));
    if (language) code.dataset.language = language;
    pre.append(code);
    parent.append(pre);
    return end + 1; // past the closing fence (or the end)
  }

  function list(lines, start, parent) {
    const ordered = /\d/.test(lines[start].match(LIST_ITEM)[1]);
    const node = element(ordered ? "ol" : "ul");
    if (ordered) node.start = parseInt(lines[start].match(LIST_ITEM)[1], 10);
    let position = start;
    let itemLines = null;
    const flush = () => {
      if (itemLines === null) return;
      const item = element("li");
      renderLines(itemLines, item);
      node.append(item);
    };
    while (position < lines.length) {
      const line = lines[position];
      const match = line.match(LIST_ITEM);
      if (match && /\d/.test(match[1]) === ordered) {
        flush();
        itemLines = [match[2]];
      } else if (!match && line.trim() && /^\s/.test(line) && !FENCE.test(line)) {
        itemLines.push(line.trim()); // an indented continuation of the item
      } else {
        break;
      }
      position += 1;
    }
    flush();
    parent.append(node);
    return position;
  }

  function render(text, container) {
    container.replaceChildren();
    const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
    let position = 0;
    while (position < lines.length) {
      const line = lines[position];
      if (!line.trim()) {
        position += 1;
      } else if (FENCE.test(line)) {
        position = codeBlock(lines, position, container);
      } else if (RULE.test(line)) {
        container.append(element("hr"));
        position += 1;
      } else if (HEADING.test(line)) {
        const [, hashes, title] = line.match(HEADING);
        const heading = element("h" + Math.min(6, hashes.length + 2)); // below the page's own
        renderInline(title, heading);
        container.append(heading);
        position += 1;
      } else if (LIST_ITEM.test(line)) {
        position = list(lines, position, container);
      } else if (QUOTE.test(line)) {
        const quoted = [];
        while (position < lines.length && QUOTE.test(lines[position])) {
          quoted.push(lines[position].match(QUOTE)[1]);
          position += 1;
        }
        const quote = element("blockquote");
        renderLines(quoted, quote);
        container.append(quote);
      } else {
        const paragraph = [line];
        position += 1;
        while (position < lines.length && lines[position].trim() && !startsBlock(lines[position])) {
          paragraph.push(lines[position]);
          position += 1;
        }
        const node = element("p");
        renderLines(paragraph, node);
        container.append(node);
      }
    }
  }

  function renderPlain(text, container) {
    container.replaceChildren(element("p", String(text)));
    container.firstChild.className = "plain";
  }

  window.TritiumMarkdown = { render, renderPlain };
})();
