// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.widget;

public class TextView extends android.view.View {
  public final void setText(CharSequence text) { throw new RuntimeException("stub"); }
  public CharSequence getText() { throw new RuntimeException("stub"); }
}
