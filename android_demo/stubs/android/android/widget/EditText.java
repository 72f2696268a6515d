// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.widget;

public class EditText extends TextView {
  @Override public android.text.Editable getText() { throw new RuntimeException("stub"); }
}
