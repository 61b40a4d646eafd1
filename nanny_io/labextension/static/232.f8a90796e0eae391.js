"use strict";(self.rspackChunknanny_io=self.rspackChunknanny_io||[]).push([[232],{475(r,o,e){var t=e(601),a=e.n(t),n=e(314),i=(e.n(n))()(a());i.push([r.id,`/* The Kernel Log panel. Colours come from JupyterLab's theme variables, so light and dark
   themes both work; the stream colours are the theme's own (error, warn, info, success). */

.jp-NannyLog {
  display: flex;
  flex-direction: column;
  background: var(--jp-layout-color0);
  color: var(--jp-content-font-color1);
  font-size: var(--jp-code-font-size);
  min-width: 200px;
  min-height: 100px;
}

.jp-NannyLog-toolbar {
  display: flex;
  flex-wrap: wrap;
  align-items: center;
  gap: 8px;
  padding: 4px 8px;
  border-bottom: var(--jp-border-width) solid var(--jp-toolbar-border-color);
  background: var(--jp-toolbar-background);
  font-family: var(--jp-ui-font-family);
  font-size: var(--jp-ui-font-size1);
}

.jp-NannyLog-toggle {
  display: inline-flex;
  align-items: center;
  gap: 2px;
  padding: 0 6px 0 2px;
  border-radius: 3px;
  border-left: 4px solid var(--jp-NannyLog-stream-color);
  cursor: pointer;
}

.jp-NannyLog-search {
  width: 14em;
}

.jp-NannyLog-count,
.jp-NannyLog-status {
  color: var(--jp-ui-font-color2);
}

.jp-NannyLog-status {
  margin-left: auto;
}

.jp-NannyLog-status[data-state='reconnecting'],
.jp-NannyLog-status[data-state='ended'] {
  color: var(--jp-warn-color0);
  font-weight: bold;
}

.jp-NannyLog-status[data-state='live']::before {
  content: '● ';
  color: var(--jp-success-color1);
}

.jp-NannyLog-button {
  padding: 0 8px;
  height: 24px;
  background: var(--jp-layout-color2);
  color: var(--jp-ui-font-color1);
  cursor: pointer;
}

.jp-NannyLog-body {
  flex: 1 1 auto;
  overflow: auto;
  font-family: var(--jp-code-font-family);
  line-height: 1.4;
  contain: strict;
}

.jp-NannyLog-elided {
  padding: 2px 8px;
  color: var(--jp-ui-font-color2);
  font-style: italic;
  border-bottom: 1px dashed var(--jp-border-color2);
}

.jp-NannyLog-row {
  display: flex;
  padding: 0 8px;
  border-left: 4px solid var(--jp-NannyLog-stream-color);
  /* Rows out of view are neither laid out nor painted. */
  content-visibility: auto;
  contain-intrinsic-size: auto 1.4em;
}

/* The time, then the stream's name (generated content: fewer elements per row). */
.jp-NannyLog-row::before {
  content: attr(data-time);
  flex: none;
  width: 7.5em;
  color: var(--jp-ui-font-color2);
}

.jp-NannyLog-text {
  flex: 1 1 auto;
  min-width: 0;
  white-space: pre-wrap;
  overflow-wrap: anywhere;
  /* A hanging indent: wrapped lines start under the text, not under the stream name. */
  padding-left: 5em;
  text-indent: -5em;
}

.jp-NannyLog-text::before {
  content: attr(data-label);
  display: inline-block;
  width: 5em;
  text-indent: 0;
  color: var(--jp-NannyLog-stream-color);
  font-weight: bold;
}

.jp-NannyLog-text mark {
  background: var(--jp-search-selected-match-background-color, #ff0);
  color: var(--jp-search-selected-match-color, inherit);
}

/* Stream colours (the row's left edge, the stream name, the filter toggle). */
[data-stream='stdout'] {
  --jp-NannyLog-stream-color: var(--jp-info-color1);
}

[data-stream='stderr'] {
  --jp-NannyLog-stream-color: var(--jp-error-color1);
}

[data-stream='log'] {
  --jp-NannyLog-stream-color: var(--jp-warn-color1);
}

[data-stream='nanny'],
[data-stream='marker'] {
  --jp-NannyLog-stream-color: var(--jp-ui-font-color3);
}

/* Text is in the theme's font colours (readable in light and dark themes); the stream's
   colour marks the row's edge and name, and the priority tints the row (as journalctl
   colours lines): errors and worse as Lab tints stderr, warnings in the theme's warning
   colour, debug lines dimmed. */
.jp-NannyLog-row:not([data-marker])[data-priority='0'],
.jp-NannyLog-row:not([data-marker])[data-priority='1'],
.jp-NannyLog-row:not([data-marker])[data-priority='2'] {
  background: var(--jp-rendermime-error-background);
  font-weight: bold;
}

.jp-NannyLog-row:not([data-marker])[data-priority='3'] {
  background: var(--jp-rendermime-error-background);
}

.jp-NannyLog-row:not([data-marker])[data-priority='4'] {
  background: color-mix(in srgb, var(--jp-warn-color1) 14%, transparent);
}

.jp-NannyLog-row:not([data-marker])[data-priority='7'] {
  color: var(--jp-content-font-color2);
}

.jp-NannyLog-level {
  display: inline-flex;
  align-items: center;
  gap: 4px;
}

.jp-NannyLog-level select {
  height: 24px;
  padding: 0 4px;
  background: var(--jp-layout-color2);
  color: var(--jp-ui-font-color1);
}

/* Markers: deaths, restarts, gaps. */
.jp-NannyLog-row[data-marker] {
  margin: 2px 0;
  padding-top: 2px;
  padding-bottom: 2px;
  font-family: var(--jp-ui-font-family);
  font-weight: bold;
}

.jp-NannyLog-row[data-marker='died'] {
  --jp-NannyLog-stream-color: var(--jp-error-color0);
  background: var(--jp-rendermime-error-background);
  color: var(--jp-content-font-color0);
  border-top: 2px solid var(--jp-error-color1);
}

.jp-NannyLog-row[data-marker='restarted'],
.jp-NannyLog-row[data-marker='started'] {
  --jp-NannyLog-stream-color: var(--jp-success-color1);
  background: var(--jp-layout-color2);
  color: var(--jp-content-font-color0);
}

.jp-NannyLog-row[data-marker='gap'],
.jp-NannyLog-row[data-marker='truncated'],
.jp-NannyLog-row[data-marker='shutdown'],
.jp-NannyLog-row[data-marker='notice'] {
  --jp-NannyLog-stream-color: var(--jp-warn-color1);
  background: var(--jp-layout-color2);
  color: var(--jp-content-font-color0);
  font-style: italic;
}

.jp-NannyLog-row.jp-mod-revealed {
  outline: 2px solid var(--jp-brand-color1);
  outline-offset: -2px;
}

.jp-NannyLog-resume {
  position: absolute;
  right: 24px;
  bottom: 16px;
  background: var(--jp-brand-color1);
  color: var(--jp-ui-inverse-font-color1);
  border-radius: 12px;
  box-shadow: var(--jp-elevation-z4);
}
`,""]),e.d(o,{},{A:i})},314(r){r.exports=function(r){var o=[];return o.toString=function(){return this.map(function(o){var e="",t=void 0!==o[5];return o[4]&&(e+="@supports (".concat(o[4],") {")),o[2]&&(e+="@media ".concat(o[2]," {")),t&&(e+="@layer".concat(o[5].length>0?" ".concat(o[5]):""," {")),e+=r(o),t&&(e+="}"),o[2]&&(e+="}"),o[4]&&(e+="}"),e}).join("")},o.i=function(r,e,t,a,n){"string"==typeof r&&(r=[[null,r,void 0]]);var i={};if(t)for(var p=0;p<this.length;p++){var c=this[p][0];null!=c&&(i[c]=!0)}for(var s=0;s<r.length;s++){var l=[].concat(r[s]);t&&i[l[0]]||(void 0!==n&&(void 0===l[5]||(l[1]="@layer".concat(l[5].length>0?" ".concat(l[5]):""," {").concat(l[1],"}")),l[5]=n),e&&(l[2]&&(l[1]="@media ".concat(l[2]," {").concat(l[1],"}")),l[2]=e),a&&(l[4]?(l[1]="@supports (".concat(l[4],") {").concat(l[1],"}"),l[4]=a):l[4]="".concat(a)),o.push(l))}},o}},601(r){r.exports=function(r){return r[1]}},72(r){var o=[];function e(r){for(var e=-1,t=0;t<o.length;t++)if(o[t].identifier===r){e=t;break}return e}function t(r,t){for(var a={},n=[],i=0;i<r.length;i++){var p=r[i],c=t.base?p[0]+t.base:p[0],s=a[c]||0,l="".concat(c," ").concat(s);a[c]=s+1;var d=e(l),u={css:p[1],media:p[2],sourceMap:p[3],supports:p[4],layer:p[5]};if(-1!==d)o[d].references++,o[d].updater(u);else{var g=function(r,o){var e=o.domAPI(o);return e.update(r),function(o){o?(o.css!==r.css||o.media!==r.media||o.sourceMap!==r.sourceMap||o.supports!==r.supports||o.layer!==r.layer)&&e.update(r=o):e.remove()}}(u,t);t.byIndex=i,o.splice(i,0,{identifier:l,updater:g,references:1})}n.push(l)}return n}r.exports=function(r,a){var n=t(r=r||[],a=a||{});return function(r){r=r||[];for(var i=0;i<n.length;i++){var p=e(n[i]);o[p].references--}for(var c=t(r,a),s=0;s<n.length;s++){var l=e(n[s]);0===o[l].references&&(o[l].updater(),o.splice(l,1))}n=c}}},659(r){var o={};r.exports=function(r,e){var t=function(r){if(void 0===o[r]){var e=document.querySelector(r);if(window.HTMLIFrameElement&&e instanceof window.HTMLIFrameElement)try{e=e.contentDocument.head}catch(r){e=null}o[r]=e}return o[r]}(r);if(!t)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");t.appendChild(e)}},540(r){r.exports=function(r){var o=document.createElement("style");return r.setAttributes(o,r.attributes),r.insert(o,r.options),o}},56(r,o,e){r.exports=function(r){var o=e.nc;o&&r.setAttribute("nonce",o)}},206(r){r.exports=function(r){if("u"<typeof document)return{update:function(){},remove:function(){}};var o=r.insertStyleElement(r);return{update:function(e){var t,a,n;t="",e.supports&&(t+="@supports (".concat(e.supports,") {")),e.media&&(t+="@media ".concat(e.media," {")),(a=void 0!==e.layer)&&(t+="@layer".concat(e.layer.length>0?" ".concat(e.layer):""," {")),t+=e.css,a&&(t+="}"),e.media&&(t+="}"),e.supports&&(t+="}"),(n=e.sourceMap)&&"u">typeof btoa&&(t+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(n))))," */")),r.styleTagTransform(t,o,r.options)},remove:function(){var r;null===(r=o).parentNode||r.parentNode.removeChild(r)}}}},113(r){r.exports=function(r,o){if(o.styleSheet)o.styleSheet.cssText=r;else{for(;o.firstChild;)o.removeChild(o.firstChild);o.appendChild(document.createTextNode(r))}}},579(r,o,e){var t=e(72),a=e.n(t),n=e(206),i=e.n(n),p=e(659),c=e.n(p),s=e(56),l=e.n(s),d=e(540),u=e.n(d),g=e(113),m=e.n(g),f=e(475),y={};y.styleTagTransform=m(),y.setAttributes=l(),y.insert=c().bind(null,"head"),y.domAPI=i(),y.insertStyleElement=u(),a()(f.A,y),f.A&&f.A.locals&&f.A.locals}}]);