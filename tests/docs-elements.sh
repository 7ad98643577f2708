#!/usr/bin/env bash
# tests/docs-elements.sh: every property of every element of the plugin is documented in
# docs/elements.md, as a code span (`property-name`) in that element's section (`## element`).
#
# The elements are those gst-inspect-1.0 lists for the plugin file; their properties are those
# gst-inspect-1.0 shows. Properties an element only inherits from a GStreamer base class (name,
# parent, the base transform's qos, the base sink's sync, async, ...) are skipped: they are found
# by inspecting stock elements of those base classes (identity and capsfilter, fakesink and
# filesink: the properties both of a pair show with the same description) and skipped where a
# plugin element shows the same name and description. Exits 1 naming each element and property
# not documented; prints "docs-elements: N properties of M elements documented" otherwise.
# Settings: LOGSAD_PLUGIN_DIR (as tests/pipelines.sh) [target/release], DOCS [docs/elements.md].

set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOGSAD_PLUGIN_DIR=${LOGSAD_PLUGIN_DIR:-$REPO/target/release}
export GST_PLUGIN_PATH="$LOGSAD_PLUGIN_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
PLUGIN=$LOGSAD_PLUGIN_DIR/libgstlogsad.so
DOCS=${DOCS:-$REPO/docs/elements.md}

die() {
    echo "docs-elements: $*" >&2
    exit 1
}
[[ -f $PLUGIN ]] || die "no plugin $PLUGIN (run: cargo build --release)"
[[ -f $DOCS ]] || die "no $DOCS"

# props ELEMENT: "name<TAB>description" for each property gst-inspect-1.0 shows.
props() {
    gst-inspect-1.0 "$1" 2>/dev/null | awk '
        /^Element Properties:/ { on = 1; next }
        on && /^[^ ]/ { on = 0 }
        on && match($0, /^  [A-Za-z0-9_-]+ *: /) {
            name = substr($0, 3, RLENGTH - 2); sub(/ *: $/, "", name)
            print name "\t" substr($0, RLENGTH + 1)
        }'
}

# Base-class properties: those two stock elements of one base class share, name and description.
base=$(
    comm -12 <(props identity | sort) <(props capsfilter | sort)
    comm -12 <(props fakesink | sort) <(props filesink | sort)
)
[[ -n $base ]] || die "could not inspect the stock elements identity, capsfilter, fakesink, filesink"

# The plugin's elements: the "  name: long name" lines of the plugin file's feature list.
elements=$(gst-inspect-1.0 "$PLUGIN" 2>/dev/null | sed -n 's/^  \([a-z0-9_-]*\): .*/\1/p')
[[ -n $elements ]] || die "gst-inspect-1.0 lists no element in $PLUGIN"

# section ELEMENT: the lines of docs/elements.md from "## ELEMENT" (backticks allowed) up to the
# next "## " heading.
section() {
    awk -v el="$1" '
        /^## / { h = substr($0, 4); gsub(/`/, "", h); sub(/ +$/, "", h); on = (h == el); next }
        on' "$DOCS"
}

checked=0
count=0
missing=0
for element in $elements; do
    count=$((count + 1))
    text=$(section "$element")
    if [[ -z $text ]]; then
        echo "docs-elements: $element: no section \"## $element\" in ${DOCS#"$REPO"/}"
        missing=$((missing + 1))
        continue
    fi
    while IFS=$'\t' read -r name blurb; do
        [[ -n $name ]] || continue
        grep -qxF "$name"$'\t'"$blurb" <<<"$base" && continue
        checked=$((checked + 1))
        if ! grep -qF "\`$name\`" <<<"$text"; then
            echo "docs-elements: $element: property $name is not documented in ${DOCS#"$REPO"/} (no \`$name\` in its section)"
            missing=$((missing + 1))
        fi
    done < <(props "$element")
done

if ((missing > 0)); then
    echo "docs-elements: $missing missing"
    exit 1
fi
echo "docs-elements: $checked properties of $count elements documented"
