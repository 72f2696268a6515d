package dev.gemmaedge.demo;

import android.app.Activity;
import android.content.Intent;
import android.net.Uri;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.util.Log;
import android.widget.Button;
import android.widget.EditText;
import android.widget.ScrollView;
import android.widget.SeekBar;
import android.widget.TextView;
import dev.gemmaedge.chat.ChatHistory;
import dev.gemmaedge.chat.GenerationStats;
import dev.gemmaedge.chat.StopFilter;
import dev.gemmaedge.chat.TokenCounter;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.pytorch.executorch.extension.llm.LlmCallback;
import org.pytorch.executorch.extension.llm.LlmGenerationConfig;
import org.pytorch.executorch.extension.llm.LlmModule;

/**
 * Chat with a gemma-edge {@code .pte} through ExecuTorch's LlmModule. Prompt formatting, history
 * truncation, stop markers and statistics live in the plain-Java core (dev.gemmaedge.chat); this
 * class only wires them to the screen and to the runtime, on one background thread.
 */
public class MainActivity extends Activity {
  static final String TAG = "GemmaEdge";
  /** Where `adb push` puts the artifacts (android_demo/README.md). */
  static final File PUSHED = new File("/data/local/tmp/gemma");
  /** The KV-cache length of the export (`gemma-edge export pte --max-seq-len`, default 2048). */
  static final int CONTEXT_TOKENS = 2048;
  static final int REPLY_TOKENS = 512;
  private static final int PICK_MODEL = 1;
  private static final int PICK_TOKENIZER = 2;

  private final ExecutorService worker = Executors.newSingleThreadExecutor();
  private final Handler ui = new Handler(Looper.getMainLooper());
  private final ChatHistory history = new ChatHistory(null);
  private final StringBuilder transcript = new StringBuilder();
  private LlmModule module;
  private float loadedTemperature = Float.NaN;
  private File modelFile = new File(PUSHED, "model.pte");
  private File tokenizerFile = new File(PUSHED, "tokenizer.model");

  private TextView status;
  private TextView transcriptView;
  private TextView statsView;
  private TextView temperatureLabel;
  private SeekBar temperature;
  private ScrollView scroll;
  private EditText input;
  private Button send;
  private Button stop;

  @Override
  protected void onCreate(Bundle savedInstanceState) {
    super.onCreate(savedInstanceState);
    setContentView(R.layout.activity_main);
    status = findViewById(R.id.model_status);
    transcriptView = findViewById(R.id.transcript);
    statsView = findViewById(R.id.stats);
    temperatureLabel = findViewById(R.id.temperature_label);
    temperature = findViewById(R.id.temperature);
    scroll = findViewById(R.id.scroll);
    input = findViewById(R.id.input);
    send = findViewById(R.id.send);
    stop = findViewById(R.id.stop);

    temperature.setOnSeekBarChangeListener(new SeekBar.OnSeekBarChangeListener() {
      @Override public void onProgressChanged(SeekBar bar, int progress, boolean fromUser) {
        temperatureLabel.setText(String.format(Locale.ROOT, "Temperature %.2f (0 = greedy)", temperature()));
      }
      @Override public void onStartTrackingTouch(SeekBar bar) {}
      @Override public void onStopTrackingTouch(SeekBar bar) {}
    });
    temperature.setProgress(0);
    temperatureLabel.setText(String.format(Locale.ROOT, "Temperature %.2f (0 = greedy)", temperature()));

    findViewById(R.id.load).setOnClickListener(v -> worker.execute(this::loadModel));
    findViewById(R.id.pick).setOnClickListener(v -> pick(PICK_MODEL));
    findViewById(R.id.clear).setOnClickListener(v -> {
      history.clear();
      transcript.setLength(0);
      transcriptView.setText("");
    });
    send.setOnClickListener(v -> onSend());
    stop.setOnClickListener(v -> {
      if (module != null) module.stop();
    });
    showStatus("Model: " + modelFile + "\nTokenizer: " + tokenizerFile);
  }

  private float temperature() {
    return temperature.getProgress() / 100f;
  }

  /** (Re)creates the module; LlmModule takes its temperature at construction. Worker thread. */
  private boolean loadModel() {
    float t = temperature();
    if (module != null && t == loadedTemperature) return true;
    showStatus("Loading " + modelFile.getName() + " …");
    try {
      if (module != null) module.resetNative();
      long start = System.currentTimeMillis();
      module = new LlmModule(modelFile.getAbsolutePath(), tokenizerFile.getAbsolutePath(), t);
      int rc = module.load();
      if (rc != 0) throw new IllegalStateException("LlmModule.load() returned error " + rc);
      loadedTemperature = t;
      long ms = System.currentTimeMillis() - start;
      Log.i(TAG, "loaded " + modelFile + " in " + ms + " ms, temperature " + t);
      showStatus(String.format(Locale.ROOT, "Loaded %s in %d ms (temperature %.2f)", modelFile.getName(), ms, t));
      return true;
    } catch (RuntimeException e) {
      module = null;
      Log.e(TAG, "load failed", e);
      showStatus("Could not load " + modelFile + ": " + e.getMessage()
          + "\nPush model.pte and tokenizer.model to " + PUSHED + " or pick them.");
      return false;
    }
  }

  private void onSend() {
    String text = input.getText().toString();
    if (text.trim().isEmpty()) return;
    input.setText("");
    ChatHistory.Prompt prompt;
    try {
      history.addUser(text);
      prompt = history.prompt(CONTEXT_TOKENS, REPLY_TOKENS, TokenCounter.UTF8_BOUND);
    } catch (IllegalStateException e) {
      history.dropUnansweredUser();
      showStatus(e.getMessage());
      return;
    }
    appendTranscript("\n\nYou: " + text.trim() + "\n\nGemma: ");
    if (prompt.droppedTurns > 0) showStatus("Left out the " + prompt.droppedTurns + " oldest turns to fit the context");
    setGenerating(true);
    worker.execute(() -> generate(prompt));
  }

  /** Worker thread: streams pieces through the stop filter to the screen, then records the reply. */
  private void generate(ChatHistory.Prompt prompt) {
    if (!loadModel()) {
      ui.post(() -> {
        history.dropUnansweredUser();
        setGenerating(false);
      });
      return;
    }
    StopFilter filter = StopFilter.gemma();
    long start = System.currentTimeMillis();
    long[] firstPiece = {0};
    String[] runnerStats = {null};
    module.resetContext(); // the prompt carries the whole conversation; start from an empty KV cache
    LlmGenerationConfig config = LlmGenerationConfig.create()
        .echo(false)
        .seqLen(Math.min(CONTEXT_TOKENS, prompt.tokens + REPLY_TOKENS))
        .temperature(loadedTemperature)
        .build();
    int rc = module.generate(prompt.text, config, new LlmCallback() {
      @Override public void onResult(String piece) {
        if (firstPiece[0] == 0) firstPiece[0] = System.currentTimeMillis();
        String shown = filter.accept(piece);
        if (filter.stopped()) module.stop();
        if (!shown.isEmpty()) ui.post(() -> appendTranscript(shown));
      }

      @Override public void onStats(String json) {
        runnerStats[0] = json;
      }
    });
    String tail = filter.finish();
    String reply = filter.text();
    long end = System.currentTimeMillis();
    String summary = summary(runnerStats[0], start, firstPiece[0], end, reply);
    Log.i(TAG, "generate rc=" + rc + " " + summary);
    ui.post(() -> {
      appendTranscript(tail);
      if (reply.isEmpty()) history.dropUnansweredUser(); else history.addModel(reply);
      statsView.setText(summary);
      setGenerating(false);
    });
  }

  /** The runner's own figures when it reports them; otherwise wall-clock ones measured here. */
  static String summary(String runnerJson, long start, long firstPiece, long end, String reply) {
    if (runnerJson != null) {
      try {
        return GenerationStats.fromRunnerJson(runnerJson).summary();
      } catch (IllegalArgumentException e) {
        Log.w(TAG, "unreadable runner stats: " + e.getMessage());
      }
    }
    long ttft = firstPiece == 0 ? 0 : firstPiece - start;
    return String.format(Locale.ROOT, "first token %d ms · %.1f s in all · %d characters", ttft,
        (end - start) / 1000.0, reply.length());
  }

  private void setGenerating(boolean busy) {
    send.setEnabled(!busy);
    stop.setEnabled(busy);
  }

  private void appendTranscript(String s) {
    transcript.append(s);
    transcriptView.setText(transcript);
    scroll.post(() -> scroll.fullScroll(ScrollView.FOCUS_DOWN));
  }

  private void showStatus(String s) {
    ui.post(() -> status.setText(s));
  }

  private void pick(int which) {
    Intent intent = new Intent(Intent.ACTION_OPEN_DOCUMENT).addCategory(Intent.CATEGORY_OPENABLE).setType("*/*");
    startActivityForResult(intent, which);
  }

  @Override
  protected void onActivityResult(int requestCode, int resultCode, Intent data) {
    super.onActivityResult(requestCode, resultCode, data);
    if (resultCode != RESULT_OK || data == null || data.getData() == null) return;
    Uri uri = data.getData();
    File target = new File(getFilesDir(), requestCode == PICK_MODEL ? "model.pte" : "tokenizer.model");
    worker.execute(() -> {
      try {
        copyAtomically(uri, target);
        if (requestCode == PICK_MODEL) {
          modelFile = target;
          ui.post(() -> pick(PICK_TOKENIZER));
        } else {
          tokenizerFile = target;
          if (module != null) module.resetNative();
          module = null; // load the picked pair on the next message
          showStatus("Picked " + modelFile + " and " + tokenizerFile);
        }
      } catch (IOException e) {
        showStatus("Could not copy " + uri + ": " + e.getMessage());
      }
    });
  }

  /** Copies to a temporary file first so a half-copied model is never loaded. */
  private void copyAtomically(Uri uri, File target) throws IOException {
    File tmp = new File(target.getPath() + ".part");
    try (InputStream in = getContentResolver().openInputStream(uri); OutputStream out = new FileOutputStream(tmp)) {
      if (in == null) throw new IOException("no data");
      byte[] buf = new byte[1 << 20];
      for (int n; (n = in.read(buf)) > 0; ) out.write(buf, 0, n);
    }
    if (!tmp.renameTo(target)) throw new IOException("rename to " + target + " failed");
  }

  @Override
  protected void onDestroy() {
    worker.shutdownNow();
    if (module != null) module.resetNative();
    super.onDestroy();
  }
}
