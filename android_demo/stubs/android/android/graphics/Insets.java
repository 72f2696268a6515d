// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.graphics;

public final class Insets {
  public final int left = 0;
  public final int top = 0;
  public final int right = 0;
  public final int bottom = 0;
  private Insets() { throw new RuntimeException("stub"); }
}
